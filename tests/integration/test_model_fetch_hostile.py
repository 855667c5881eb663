"""model_fetch against hubs that lie or listen in (tests/support/hostile_hub.py, loopback, real TLS from a CA the
openssl CLI makes here): credentials per endpoint and never in clear, redirects that would carry the token away,
listings with unsafe or malformed entries, bodies without bounds, listed names that look like temporary ones."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.hostile_hub import COMMIT, HostileHub, hf_listing, make_ca

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

REPO_ID = "evil-org/model"
HUB_TOKEN = "hf_hub_token_0123456789abcdef"
MIRROR_TOKEN = "mirror_token_fedcba9876543210"
FILES = {"config.json": b'{"model_type": "tiny"}\n', "w.bin": os.urandom(300_000)}


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> dict:
    return make_ca(tmp_path_factory.mktemp("ca"), ["localhost", "IP:127.0.0.1"])


def fetch(run_module, dest: Path, endpoints: list, **args) -> dict:
    params = dict(dest=str(dest), repo_id=REPO_ID, endpoints=endpoints, retries=0, timeout=10, chunk_size_mb=1,
                  connections=2)
    params.update(args)
    return run_module("model_fetch", params, timeout=120)


def on_disk(dest: Path) -> dict:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
            if p.is_file() and not p.relative_to(dest).as_posix().startswith(".autoglm/")}


# ---- 4. credentials per endpoint -----------------------------------------------------------------------------

def test_each_endpoint_gets_only_its_own_token(run_module, ca, tmp_path):
    with HostileHub() as mirror, HostileHub(files=FILES, tls=ca) as hub:
        mirror.routes["/api/models/%s/revision/main" % REPO_ID] = (503, {}, b"down")
        endpoints = [{"url": mirror.url, "token": MIRROR_TOKEN, "allow_insecure_token": True},
                     {"url": hub.url, "token": HUB_TOKEN}]
        result = fetch(run_module, tmp_path / "m", endpoints, ca_path=ca["ca"])
        assert result["_rc"] == 0, result["msg"]
        assert mirror.auth_seen() == {"Bearer " + MIRROR_TOKEN}
        assert hub.auth_seen() == {"Bearer " + HUB_TOKEN}
    assert on_disk(tmp_path / "m") == FILES
    text = json.dumps(result)
    assert HUB_TOKEN not in text and MIRROR_TOKEN not in text


def test_a_token_never_crosses_plain_http_unless_that_endpoint_allows_it(run_module, tmp_path):
    with HostileHub(files=FILES) as mirror:
        plain = fetch(run_module, tmp_path / "a", [mirror.url], token=HUB_TOKEN)
        assert plain["_rc"] == 0, plain["msg"]
        assert mirror.auth_seen() == {None}
        assert "not sent to %s" % mirror.url in json.dumps(plain.get("warnings"))
        refused = fetch(run_module, tmp_path / "b", [{"url": mirror.url, "token": MIRROR_TOKEN}])
        assert refused["_rc"] != 0 and "plain http" in refused["msg"] and "allow_insecure_token" in refused["msg"]
        assert MIRROR_TOKEN not in json.dumps(refused)
        assert mirror.auth_seen() == {None}


@pytest.mark.parametrize("where", ["http-same-port", "https-other-port", "https-same-origin"])
def test_a_redirect_keeps_the_token_only_on_the_same_scheme_host_and_port(run_module, ca, tmp_path, where):
    with HostileHub(files=FILES, tls=ca) as hub, HostileHub(files=FILES, tls=ca) as other:
        listing_path = "/api/models/%s/revision/main" % REPO_ID
        target = {"http-same-port": "http://127.0.0.1:%d/moved" % hub.port,
                  "https-other-port": other.url + "/moved",
                  "https-same-origin": hub.url + "/moved"}[where]
        hub.routes[listing_path] = (302, {"Location": target}, b"")
        for server in (hub, other):
            server.routes["/moved"] = (200, {"Content-Type": "application/json"}, json.dumps(hf_listing(FILES)).encode())
        result = fetch(run_module, tmp_path / "m", [hub.url], token=HUB_TOKEN, ca_path=ca["ca"])
        assert result["_rc"] == 0, result["msg"]
        moved = [r for r in hub.requests + other.requests if r[1] == "/moved"]
        assert len(moved) == 1
        if where == "https-same-origin":
            assert moved[0][2] == "Bearer " + HUB_TOKEN
        else:
            assert moved[0][2] is None, "the token followed a redirect to %s" % target


# ---- HTTPS: certificate and host name always verified ----------------------------------------------------------

def test_https_endpoint_is_verified_with_the_ca_bundle(run_module, ca, tmp_path):
    with HostileHub(files=FILES, tls=ca) as hub:
        ok = fetch(run_module, tmp_path / "ok", [{"url": hub.url, "token": HUB_TOKEN}], ca_bundle=ca["ca"])
        assert ok["_rc"] == 0, ok["msg"]
        assert on_disk(tmp_path / "ok") == FILES
        seen = len(hub.requests)
        untrusted = fetch(run_module, tmp_path / "no-ca", [{"url": hub.url, "token": HUB_TOKEN}])
        assert untrusted["_rc"] != 0 and "not trusted" in untrusted["msg"] and "ca_bundle" in untrusted["msg"]
        unverified = fetch(run_module, tmp_path / "off", [{"url": hub.url, "token": HUB_TOKEN}], validate_certs=False)
        assert unverified["_rc"] != 0 and "validate_certs" in unverified["msg"]
        assert hub.requests[seen:] == []  # neither run sent a request, so neither sent the token


def test_a_certificate_for_another_name_is_refused(run_module, tmp_path):
    only_localhost = make_ca(tmp_path / "ca", ["localhost"])  # the endpoint is 127.0.0.1
    with HostileHub(files=FILES, tls=only_localhost) as hub:
        result = fetch(run_module, tmp_path / "m", [{"url": hub.url, "token": HUB_TOKEN}],
                       ca_bundle=only_localhost["ca"])
        assert result["_rc"] != 0 and "not trusted" in result["msg"] and "127.0.0.1" in result["msg"]
        assert hub.requests == []


# ---- 5. listings and bodies are bounded and checked ------------------------------------------------------------

def sib(path, data=b"x", **overrides):
    entry = {"rfilename": path, "size": len(data), "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    entry.update(overrides)
    return entry


BAD_LISTINGS = {
    "dotdot": ({"sha": COMMIT, "siblings": [sib("../escape.bin")]}, "siblings[0]"),
    "inner-dotdot": ({"sha": COMMIT, "siblings": [sib("a/../../b")]}, "siblings[0]"),
    "dot": ({"sha": COMMIT, "siblings": [sib("config.json"), sib(".")]}, "siblings[1]"),
    "absolute": ({"sha": COMMIT, "siblings": [sib("/tmp/evil")]}, "siblings[0]"),
    "backslash": ({"sha": COMMIT, "siblings": [sib("a\\..\\b")]}, "siblings[0]"),
    "newline": ({"sha": COMMIT, "siblings": [sib("a\nb")]}, "control characters"),
    "nul": ({"sha": COMMIT, "siblings": [sib("a\u0000b")]}, "control characters"),
    "escape": ({"sha": COMMIT, "siblings": [sib("a\u001b[31mb")]}, "control characters"),
    "size-string": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs={"sha256": "a" * 64, "size": "12"})]}, "size"),
    "size-negative": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs={"sha256": "a" * 64, "size": -1})]}, "size"),
    "size-bool": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs={"sha256": "a" * 64, "size": True})]}, "size"),
    "sha-short": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs={"sha256": "abc", "size": 1})]}, "sha256"),
    "sha-type": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs={"sha256": 7, "size": 1})]}, "sha256"),
    "blob-id": ({"sha": COMMIT, "siblings": [{"rfilename": "c.json", "size": 1, "blobId": "xyz"}]}, "git blob id"),
    "no-hash": ({"sha": COMMIT, "siblings": [{"rfilename": "c.json", "size": 1}]}, "cannot be verified"),
    "commit-name": ({"sha": "main", "siblings": [sib("w.bin")]}, "commit id"),
    "commit-missing": ({"siblings": [sib("w.bin")]}, "commit id"),
    "sibling-int": ({"sha": COMMIT, "siblings": [3]}, "siblings[0]"),
    "path-int": ({"sha": COMMIT, "siblings": [sib(5)]}, "siblings[0]"),
    "lfs-list": ({"sha": COMMIT, "siblings": [sib("w.bin", lfs=[1])]}, "lfs"),
    "twice": ({"sha": COMMIT, "siblings": [sib("w.bin"), sib("w.bin", b"y")]}, "listed twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTINGS))
def test_a_listing_entry_that_is_unsafe_or_malformed_is_refused_by_name(run_module, tmp_path, case):
    listing, needle = BAD_LISTINGS[case]
    dest = tmp_path / "box" / "m"
    with HostileHub(listing=listing) as hub:
        result = fetch(run_module, dest, [hub.url])
        downloads = [r for r in hub.requests if "/resolve/" in r[1]]
    assert result["_rc"] != 0 and needle in result["msg"], result["msg"]
    assert hub.url in result["msg"] and "Traceback" not in result["msg"]
    assert downloads == [] and not Path(_manifest.manifest_path(str(dest))).exists()
    box = tmp_path / "box"
    assert not box.exists() or sorted(p.name for p in box.iterdir()) == ["m"]  # nothing beside dest


def test_a_listing_for_another_commit_than_the_pinned_one_is_refused(run_module, tmp_path):
    with HostileHub(files=FILES) as hub:
        result = fetch(run_module, tmp_path / "m", [hub.url], commit="b" * 40)
    assert result["_rc"] != 0 and "the answer is for commit " + COMMIT in result["msg"] and hub.url in result["msg"]
    assert not (tmp_path / "m" / "w.bin").exists()


def test_a_file_with_neither_size_nor_hash_is_never_promoted(run_module, tmp_path):
    listing = {"sha": COMMIT, "siblings": [{"rfilename": "w.bin"}]}
    with HostileHub(files={"w.bin": b"anything at all"}, listing=listing) as hub:
        result = fetch(run_module, tmp_path / "m", [hub.url])
    assert result["_rc"] != 0 and "w.bin" in result["msg"] and "cannot be verified" in result["msg"]
    assert not (tmp_path / "m" / "w.bin").exists()


def test_a_body_of_unlisted_size_is_cut_at_the_cap(run_module, tmp_path):
    # A hash but no size, a HEAD without length and a body without end: at most the cap is written.
    listing = {"sha": COMMIT, "siblings": [{"rfilename": "w.bin", "lfs": {"sha256": "b" * 64}}]}

    def endless(_handler):
        return 200, {}, iter(lambda: b"\0" * 65536, None)

    with HostileHub(listing=listing) as hub:
        hub.routes["/%s/resolve/%s/w.bin" % (REPO_ID, COMMIT)] = endless
        result = fetch(run_module, tmp_path / "m", [hub.url], unlisted_size_limit_mb=1)
        streamed = hub.streamed
    cap = 1 << 20
    assert result["_rc"] != 0, result["msg"]
    assert "Unsupported parameters" not in result["msg"], result["msg"]  # the option exists, not just its name
    assert ("sent more than the %d bytes allowed for a file of unlisted size" % cap) in result["msg"], result["msg"]
    assert not (tmp_path / "m" / "w.bin").exists() and not list((tmp_path / "m").rglob("*.part"))
    # The download really ran up to the cap, then the client stopped reading: the server did not send on and on.
    assert cap <= streamed < 64 << 20, streamed


@pytest.mark.parametrize("declared", [True, False])
def test_a_listing_larger_than_the_cap_is_refused_with_a_clear_error(run_module, tmp_path, declared):
    body = json.dumps({"sha": COMMIT, "siblings": [], "padding": "x" * (17 << 20)}).encode()  # the default cap is 16 MiB
    assert len(body) > 16 << 20
    with HostileHub() as hub:
        listing_path = "/api/models/%s/revision/main" % REPO_ID
        hub.routes[listing_path] = (200, {"Content-Type": "application/json"},
                                    body if declared else iter([body[i:i + 65536] for i in range(0, len(body), 65536)]))
        result = fetch(run_module, tmp_path / "m", [hub.url])
    assert result["_rc"] != 0 and "max_listing_mb" in result["msg"] and hub.url in result["msg"]


def test_deeply_nested_json_is_a_clear_error(run_module, tmp_path):
    with HostileHub() as hub:
        hub.routes["/api/models/%s/revision/main" % REPO_ID] = (200, {}, b"[" * 200_000 + b"]" * 200_000)
        result = fetch(run_module, tmp_path / "m", [hub.url])
    assert result["_rc"] != 0 and "nested" in result["msg"] and hub.url in result["msg"]


# ---- 6. temporary names never collide with listed names --------------------------------------------------------

def test_listed_names_that_look_like_temporary_files_each_get_their_own_bytes(run_module, tmp_path):
    files = {"w.bin": b"the weights\n" * 1000, "w.bin.part": os.urandom(400_000),
             "w.bin.part.ranges": b'{"not": "a record"}', "config.json.link": b"a file named like a staging link"}
    dest = tmp_path / "m"
    with HostileHub(files=files) as hub:
        for parallel in (1, 4):
            result = fetch(run_module, dest, [hub.url], max_parallel_files=parallel)
            assert result["_rc"] == 0, result["msg"]
            assert on_disk(dest) == files
            manifest = _manifest.by_path(_manifest.load(_manifest.manifest_path(str(dest))))
            assert {p: e["sha256"] for p, e in manifest.items()} == {p: hashlib.sha256(d).hexdigest()
                                                                     for p, d in files.items()}
            assert run_module("model_verify", {"path": str(dest), "mode": "full"})["_rc"] == 0
            for path in files:
                (dest / path).unlink()
