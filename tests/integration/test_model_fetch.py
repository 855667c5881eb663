"""model_fetch against the project's mirror on loopback: layout, manifest, reruns, patterns, check mode, offline,
endpoint fallback, errors, lock, token hygiene, and every fault control of the mirror.

The module runs in a real subprocess as Ansible runs it (run_module); the upstream is the mirror server
(tests/support/mirror.py) serving the tiny test model.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from support.mirror import DEV_COMMIT, PRIVATE_REPO, TINY_COMMIT, TINY_REPO, TOKEN

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

SHARD = "model-00001-of-00003.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(root: Path) -> dict:
    """Relative path -> sha256 of the model files below root (our .autoglm state excluded)."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".autoglm/"):
            out[rel] = sha256(path)
    return out


def fetch(run_module, dest, url, check=False, diff=False, **args):
    params = dict(dest=str(dest), repo_id=TINY_REPO, endpoints=[url], chunk_size_mb=1, connections=4, retries=4)
    params.update(args)
    return run_module("model_fetch", params, check_mode=check, diff=diff, timeout=300)


def requests_in(log: str) -> list:
    """(method, path, status, bytes) of each access-log line."""
    return [(m[0], m[1], int(m[2]), int(m[3])) for m in re.findall(r'"(\w+) (\S+)" (\d+) (\d+)', log)]


def test_fetch_lays_out_the_repo_writes_the_manifest_and_reruns_as_a_noop(run_module, mirror_factory, tiny_model_dir,
                                                                          tmp_path):
    server = mirror_factory()
    dest = tmp_path / "model"
    first = fetch(run_module, dest, server.url)
    assert first["_rc"] == 0, first["msg"]
    assert first["changed"] is True and first["commit"] == TINY_COMMIT
    assert model_files(dest) == model_files(tiny_model_dir)
    manifest = _manifest.load(_manifest.manifest_path(str(dest)))
    assert manifest["commit"] == TINY_COMMIT and manifest["revision"] == "main" and manifest["repo_id"] == TINY_REPO
    entries = _manifest.by_path(manifest)
    assert entries[SHARD]["sha256"] == sha256(tiny_model_dir / SHARD) and entries[SHARD]["git_sha1"] is None
    assert entries["config.json"]["git_sha1"] and entries["config.json"]["sha256"] == sha256(tiny_model_dir / "config.json")
    assert {e["endpoint"] for e in manifest["files"]} == {server.url} and all(e["fetched_at"] for e in manifest["files"])
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.ranges"))
    status = json.loads((dest / ".autoglm" / "fetch-status.json").read_text())
    assert status["state"] == "done" and status["bytes_done"] == status["bytes_total"] == first["bytes_total"]
    # model_verify accepts what model_fetch wrote.
    verified = run_module("model_verify", {"path": str(dest)})
    assert verified["_rc"] == 0 and sorted(verified["verified"]) == sorted(entries)

    before = len(requests_in(server.log()))
    again = fetch(run_module, dest, server.url)
    assert again["_rc"] == 0 and again["changed"] is False and again["fetched"] == []
    sent = requests_in(server.log())[before:]
    assert len(sent) == 1 and sent[0][1].startswith("/api/models/")  # one metadata request, no file

    before = len(sent) + before
    pinned = fetch(run_module, dest, server.url, commit=TINY_COMMIT)
    offline = fetch(run_module, dest, "http://127.0.0.1:9", offline=True)
    assert pinned["changed"] is False and offline["changed"] is False and offline["commit"] == TINY_COMMIT
    assert requests_in(server.log())[before:] == []  # none at all


def test_check_mode_reports_files_and_bytes_and_writes_nothing(run_module, mirror, tiny_model_dir, tmp_path):
    dest = tmp_path / "model"
    result = fetch(run_module, dest, mirror.url, check=True, diff=True)
    assert result["_rc"] == 0 and result["changed"] is True
    assert sorted(result["fetched"]) == sorted(model_files(tiny_model_dir))
    assert result["bytes_to_fetch"] == sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert SHARD in result["diff"]["after"] and result["diff"]["before"] == ""
    assert not dest.exists()


def test_revision_change_diffs_and_prunes_removed_files(run_module, mirror, tmp_path):
    dest = tmp_path / "model"
    dev = fetch(run_module, dest, mirror.url, revision="dev")
    assert dev["commit"] == DEV_COMMIT and (dest / "README.md").is_file()
    check = fetch(run_module, dest, mirror.url, check=True, diff=True)
    assert check["removed"] == ["README.md"] and check["fetched"] == [] and "README.md" in check["diff"]["before"]
    assert (dest / "README.md").is_file()
    main = fetch(run_module, dest, mirror.url)
    assert main["changed"] is True and main["commit"] == TINY_COMMIT and main["removed"] == ["README.md"]
    assert main["fetched"] == []  # the same weights were kept, only the manifest and README changed
    assert not (dest / "README.md").exists()


def test_a_new_revision_links_unchanged_files_from_the_deployed_one(run_module, mirror_factory, tmp_path):
    server = mirror_factory()
    old, new = tmp_path / "models" / TINY_COMMIT, tmp_path / "models" / DEV_COMMIT
    assert fetch(run_module, old, server.url)["_rc"] == 0
    (old / "tokenizer.json").write_text("{}")  # changed since: the manifest no longer matches, so not reused
    check = fetch(run_module, new, server.url, revision="dev", reuse_from=[str(old), str(tmp_path / "nowhere")],
                  check=True)
    assert sorted(check["fetched"]) == ["README.md", "tokenizer.json"] and not new.exists()
    before = len(requests_in(server.log()))
    dev = fetch(run_module, new, server.url, revision="dev", reuse_from=[str(old), str(tmp_path / "nowhere")])
    assert dev["_rc"] == 0 and dev["commit"] == DEV_COMMIT, dev.get("msg")
    assert sorted(dev["fetched"]) == ["README.md", "tokenizer.json"]
    actions = {f["path"]: f["action"] for f in dev["files"]}
    assert actions[SHARD] == "linked" and actions["README.md"] == "fetched"
    assert dev["bytes_linked"] == sum((old / path).stat().st_size for path, a in actions.items() if a == "linked")
    assert (new / SHARD).stat().st_ino == (old / SHARD).stat().st_ino
    files_sent = [r for r in requests_in(server.log())[before:] if "/resolve/" in r[1]]
    assert sorted({r[1].rsplit("/", 1)[1] for r in files_sent}) == ["README.md", "tokenizer.json"]
    assert run_module("model_verify", {"path": str(new)})["_rc"] == 0
    again = fetch(run_module, new, server.url, revision="dev", reuse_from=[str(old)])
    assert again["changed"] is False and again["fetched"] == []


@pytest.mark.parametrize(("allow", "ignore", "expected"), [
    (["*.json"], [], {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                      "tokenizer_config.json"}),
    ([], ["*.safetensors", "tokenizer*"], {"config.json", "generation_config.json", "model.safetensors.index.json"}),
    (["model-*", "config.json"], ["*00002*"], {"config.json", "model-00001-of-00003.safetensors",
                                               "model-00003-of-00003.safetensors"}),
])
def test_allow_and_ignore_patterns(run_module, mirror, tmp_path, allow, ignore, expected):
    dest = tmp_path / "model"
    result = fetch(run_module, dest, mirror.url, allow_patterns=allow, ignore_patterns=ignore)
    assert result["_rc"] == 0 and set(model_files(dest)) == expected
    assert {e["path"] for e in _manifest.load(_manifest.manifest_path(str(dest)))["files"]} == expected


def test_modelscope_source(run_module, mirror, tiny_model_dir, tmp_path):
    dest = tmp_path / "model"
    result = fetch(run_module, dest, mirror.url, source="modelscope")
    assert result["_rc"] == 0, result["msg"]
    assert result["commit"] == TINY_COMMIT and model_files(dest) == model_files(tiny_model_dir)
    assert all(e["sha256"] for e in _manifest.load(_manifest.manifest_path(str(dest)))["files"])


def test_url_source_with_explicit_files(run_module, mirror, tiny_model_dir, tmp_path):
    files = [{"path": "weights/" + SHARD, "url": "%s/resolve/main/%s" % (TINY_REPO, SHARD),
              "sha256": sha256(tiny_model_dir / SHARD)},
             {"path": "config.json", "url": "%s/%s/resolve/main/config.json" % (mirror.url, TINY_REPO),
              "sha256": sha256(tiny_model_dir / "config.json"), "size": (tiny_model_dir / "config.json").stat().st_size}]
    dest = tmp_path / "model"
    result = fetch(run_module, dest, mirror.url, source="url", files=files, repo_id="local/tiny")
    assert result["_rc"] == 0, result["msg"]
    assert sha256(dest / "weights" / SHARD) == files[0]["sha256"]
    bad = [dict(files[1], sha256="0" * 64)]
    failed = fetch(run_module, tmp_path / "bad", mirror.url, source="url", files=bad)
    assert failed["_rc"] != 0 and "sha256 mismatch" in failed["msg"] and not (tmp_path / "bad" / "config.json").exists()


def test_endpoints_fall_back_in_order_and_report_who_served(run_module, mirror, tmp_path):
    dead = "http://127.0.0.1:9"
    result = fetch(run_module, tmp_path / "model", dead, endpoints=[dead, mirror.url], retries=0)
    assert result["_rc"] == 0 and result["endpoints"] == [{"endpoint": mirror.url, "files": len(result["files"]),
                                                           "bytes": result["bytes_total"]}]
    assert {f["endpoint"] for f in result["files"]} == {mirror.url}


def test_unreachable_endpoints_are_each_named(run_module, tmp_path):
    endpoints = ["http://127.0.0.1:9", "http://no-such-host.invalid:8090"]
    result = fetch(run_module, tmp_path / "model", "", endpoints=endpoints, retries=0)
    assert result["_rc"] != 0
    for endpoint in endpoints:
        assert endpoint in result["msg"]
    assert "could be reached" in result["msg"] and "DNS" in result["msg"]


@pytest.mark.parametrize(("args", "needle"), [
    ({"repo_id": "test-org/no-such-model"}, "repository test-org/no-such-model not found"),
    ({"revision": "no-such-branch"}, "revision 'no-such-branch' not found"),
])
def test_not_found_says_which(run_module, mirror, tmp_path, args, needle):
    result = fetch(run_module, tmp_path / "model", mirror.url, **args)
    assert result["_rc"] != 0 and needle in result["msg"]


def test_missing_file_is_named(run_module, mirror, tmp_path):
    files = [{"path": "nope.bin", "url": "%s/resolve/main/nope.bin" % TINY_REPO, "sha256": "1" * 64}]
    result = fetch(run_module, tmp_path / "model", mirror.url, source="url", files=files)
    assert result["_rc"] != 0 and "file nope.bin not found" in result["msg"] and "404" in result["msg"]


def test_gated_repo_needs_a_token_which_never_leaks(run_module, mirror, tmp_path):
    dest = tmp_path / "model"
    denied = fetch(run_module, dest, mirror.url, repo_id=PRIVATE_REPO)
    assert denied["_rc"] != 0 and "401" in denied["msg"] and "token" in denied["msg"]
    # The test mirror is plain http: the token goes there only because this endpoint says so.
    lab = {"url": mirror.url, "token": TOKEN, "allow_insecure_token": True}
    ok = fetch(run_module, dest, mirror.url, repo_id=PRIVATE_REPO, endpoints=[lab])
    assert ok["_rc"] == 0, ok["msg"]
    wrong = fetch(run_module, tmp_path / "w", mirror.url, repo_id=PRIVATE_REPO, endpoints=[dict(lab, token=TOKEN + "x")])
    assert wrong["_rc"] != 0
    for result in (ok, wrong, denied):
        assert TOKEN not in json.dumps(result)
    for path in dest.rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in mirror.log()


def test_a_second_run_on_the_same_destination_is_refused_while_locked(run_module, mirror, tmp_path):
    dest = tmp_path / "model"
    (dest / ".autoglm").mkdir(parents=True)
    with open(dest / ".autoglm" / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        result = fetch(run_module, dest, mirror.url)
    assert result["_rc"] != 0 and "another model_fetch (pid 4242)" in result["msg"]
    assert not (dest / SHARD).exists()
    assert fetch(run_module, dest, mirror.url)["_rc"] == 0


def test_not_enough_disk_space_fails_before_downloading(run_module, mirror, tmp_path):
    st = os.statvfs(tmp_path)
    free_mb = st.f_bavail * st.f_frsize >> 20
    result = fetch(run_module, tmp_path / "model", mirror.url, disk_headroom_mb=free_mb + 1024)
    assert result["_rc"] != 0 and "not enough disk space" in result["msg"] and result["bytes_needed"] > 0
    assert not (tmp_path / "model" / SHARD).exists()


def test_offline_without_a_snapshot_says_so(run_module, tmp_path):
    result = fetch(run_module, tmp_path / "model", "http://127.0.0.1:9", offline=True)
    assert result["_rc"] != 0 and "run once online first" in result["msg"]


def test_a_quarantined_file_is_the_only_one_fetched_again(run_module, mirror_factory, tmp_path):
    server = mirror_factory()
    dest = tmp_path / "model"
    assert fetch(run_module, dest, server.url)["_rc"] == 0
    with open(dest / SHARD, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    verify = run_module("model_verify", {"path": str(dest), "quarantine": True, "mode": "full"})
    assert verify["_rc"] != 0 and [q["path"] for q in verify["quarantined"]] == [SHARD]
    before = len(requests_in(server.log()))
    again = fetch(run_module, dest, server.url, commit=TINY_COMMIT)
    assert again["changed"] is True and again["fetched"] == [SHARD]
    files = [r for r in requests_in(server.log())[before:] if "/resolve/" in r[1]]
    assert {r[1].rsplit("/", 1)[1] for r in files} == {SHARD}
    assert run_module("model_verify", {"path": str(dest), "mode": "full"})["_rc"] == 0


# ---- every fault control of the mirror: correct files or a clear error, never a wrong file ----------

FAULTS = {
    "drops": {"drop_after": 300_000, "drop_times": 6},
    "drops-always": {"drop_after": 700_000},
    "503": {"fail_first": 3, "fail_status": 503, "retry_after": 1},
    "500": {"fail_first": 2, "fail_status": 500},
    "429-retry-after": {"fail_first": 2, "fail_status": 429, "retry_after": 1},
    "corrupt-once": {"corrupt_path": "*.safetensors", "corrupt_times": 1},
    "ignored-range": {"ignore_range": True},
    "ignored-range-and-drops": {"ignore_range": True, "drop_after": 500_000, "drop_times": 2},
    "slow-start": {"first_byte_delay": 2},
    "api-503": {"fail_first": 2, "fail_status": 503, "fail_scope": "all", "retry_after": 1},
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_end_with_the_right_files(run_module, mirror_factory, tiny_model_dir, tmp_path, fault):
    server = mirror_factory(**FAULTS[fault])
    dest = tmp_path / "model"
    result = fetch(run_module, dest, server.url, timeout=10)
    assert result["_rc"] == 0, result["msg"]
    assert model_files(dest) == model_files(tiny_model_dir)
    assert not list(dest.rglob("*.part"))


def test_fault_records_show_ranges_and_retries(run_module, mirror_factory, tmp_path):
    server = mirror_factory(ignore_range=True, fault_path="*00001*")
    result = fetch(run_module, tmp_path / "model", server.url)
    assert result["_rc"] == 0
    shard_requests = [r for r in requests_in(server.log()) if r[1].endswith("model-00001-of-00003.safetensors")]
    # Ranged requests answered 200 with the whole file, then one plain GET from zero.
    assert shard_requests[-1][2] == 200 and len(shard_requests) >= 2


@pytest.mark.parametrize("fault", [{"corrupt_path": "*00002*"}, {"fail_first": 1000, "fail_status": 500}])
def test_persistent_faults_fail_clearly_and_leave_no_wrong_file(run_module, mirror_factory, tmp_path, fault):
    server = mirror_factory(**fault)
    dest = tmp_path / "model"
    result = fetch(run_module, dest, server.url, retries=1)
    assert result["_rc"] != 0
    if "corrupt_path" in fault:
        assert "model-00002-of-00003.safetensors" in result["msg"] and "sha256 mismatch" in result["msg"]
        assert not (dest / "model-00002-of-00003.safetensors").exists()
        assert (dest / SHARD).exists()  # the good files are in place; only the bad one is missing
    else:
        assert "HTTP 500" in result["msg"] and "gave up" in result["msg"]
        assert not [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith((".part", ".ranges", ".json",
                                                                                       ".lock"))]
    assert not _manifest.manifest_path(str(dest)) or not Path(_manifest.manifest_path(str(dest))).exists()
