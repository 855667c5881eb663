"""Hubs are classes (module_utils/_hubs.py): a new one is one class plus @register, fetched through
model_fetch's own code path (_fetch.Fetcher, what main() runs) from a loopback server."""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ansible_collections.autoglm.deploy.plugins.module_utils import _fetch, _http_download, _hub_listing, _hubs, _manifest
from ansible_collections.autoglm.deploy.plugins.modules import model_fetch

COMMIT = "c" * 40
FILES = {"config.json": b'{"a": 1}\n', "sub/w.bin": bytes(range(256)) * 600}


class ToyHub(_hubs.Hub):
    """A throwaway hub: GET /ORG/NAME/REV.json lists {commit, files: [{path, size, sha256}]}, files at
    /ORG/NAME/COMMIT/PATH; its errors name themselves in X-Toy-Error."""

    name = "toy"
    title = "a toy hub"

    def listing_url(self, endpoint, rev):
        return "%s/%s/%s.json" % (endpoint, self.repo_id, rev)

    @staticmethod
    def parse(data, where, rev):
        files = {}
        for index, item in enumerate(data["files"]):
            at = "%s: files[%d]" % (where, index)
            path, info = _hub_listing.check_entry(item.get("path"), item.get("size"), item.get("sha256"), None, at)
            _hub_listing.add_entry(files, path, info, at)
        return _hub_listing.check_commit(data.get("commit"), where), files

    def file_urls(self, endpoints, path, commit):
        return [(e, "%s/%s/%s/%s" % (e, self.repo_id, commit, path)) for e in endpoints]

    def error_detail(self, headers, body):
        return headers.get("X-Toy-Code"), headers.get("X-Toy-Error") or ""

    def not_found(self, exc, rev):
        return "toy says %s (%s)" % (exc.error_code, exc.message)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        listing = {"commit": COMMIT, "files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                               for p, d in FILES.items()]}
        prefix = "/toy-org/model/"
        body, status, headers = b"", 404, {"X-Toy-Code": "NoSuchThing", "X-Toy-Error": "no such thing"}
        if self.path in (prefix + "main.json", prefix + COMMIT + ".json"):
            body, status, headers = json.dumps(listing).encode(), 200, {"Content-Type": "application/json"}
        elif self.path.startswith(prefix + COMMIT + "/") and self.path[len(prefix) + 41:] in FILES:
            body, status, headers = FILES[self.path[len(prefix) + 41:]], 200, {}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def toy_hub():
    _hubs.register(ToyHub)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        _hubs.HUBS.pop("toy", None)


class FakeModule:
    """What Fetcher uses of an AnsibleModule: params (the argument spec's defaults plus the given), warn, modes."""

    def __init__(self, **params):
        self.params = {name: copy.deepcopy(spec.get("default")) for name, spec in model_fetch.ARGUMENT_SPEC.items()}
        self.params.update(params)
        self.check_mode = False
        self._diff = False
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


def test_a_hub_is_one_registered_class_fetched_through_model_fetch(toy_hub, tmp_path):
    dest = tmp_path / "model"
    result = _fetch.Fetcher(FakeModule(dest=str(dest), source="toy", repo_id="toy-org/model",
                                       endpoints=[toy_hub])).run()
    assert result["changed"] and result["commit"] == COMMIT and result["revision"] == "main"
    assert sorted(result["fetched"]) == sorted(FILES)
    assert {p: (dest / p).read_bytes() for p in FILES} == FILES
    manifest = _manifest.load(_manifest.manifest_path(str(dest)))
    assert manifest["source"] == "toy" and manifest["commit"] == COMMIT
    assert {e["path"]: e["endpoint"] for e in manifest["files"]} == {p: toy_hub for p in FILES}
    # Pinned to the commit it resolved to, a rerun sends no request at all.
    before = len(_Handler.requests)
    again = _fetch.Fetcher(FakeModule(dest=str(dest), source="toy", repo_id="toy-org/model", commit=COMMIT,
                                      endpoints=[toy_hub])).run()
    assert not again["changed"] and again["metadata_requests"] == 0 and len(_Handler.requests) == before


def test_a_hubs_error_headers_make_its_messages(toy_hub, tmp_path):
    fetcher = _fetch.Fetcher(FakeModule(dest=str(tmp_path / "m"), source="toy", repo_id="toy-org/model",
                                        revision="nope", endpoints=[toy_hub]))
    with pytest.raises(_fetch.FetchError, match=r"toy says NoSuchThing \(.*404 Not Found .*: no such thing\)"):
        fetcher.run()


def test_the_source_choices_are_the_registry_and_the_documentation_says_so():
    assert model_fetch.ARGUMENT_SPEC["source"]["choices"] == list(_hubs.HUBS)
    assert list(_hubs.HUBS)[:3] == ["huggingface", "modelscope", "url"] and model_fetch.ARGUMENT_SPEC["source"]["default"] in _hubs.HUBS
    documented = yaml.safe_load(model_fetch.DOCUMENTATION)["options"]["source"]["choices"]
    assert documented == list(_hubs.HUBS), "add the new hub's name to model_fetch's DOCUMENTATION (source choices)"


def test_the_range_downloader_knows_no_hub():
    headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "gone", "X-Linked-Size": "7", "Content-Length": "3"}
    assert _http_download.PLAIN_HTTP.error_detail(headers, b'{"error": "x"}') == (None, "")
    assert _http_download.PLAIN_HTTP.announced_size(headers) == 3
    hf = _hubs.HuggingFace("o/n", "/tmp/x")
    assert hf.error_detail(headers, b"") == ("RepoNotFound", "gone")
    assert hf.error_detail({}, b'{"error": "x"}') == (None, "x") and hf.announced_size(headers) == 7
    assert _hubs.ModelScope("o/n", "/tmp/x").error_detail({}, b'{"Message": "m"}') == (None, "m")
    source = Path(_http_download.__file__).read_text(encoding="utf-8")
    assert not any(word in source for word in ("X-Error-Code", "X-Linked-Size", "hf_quote", "ModelScope"))


@pytest.mark.parametrize("hub, path, url", [
    (_hubs.HuggingFace, "a b/c#d.json", "https://e/o/n/resolve/%s/a%%20b/c%%23d.json" % COMMIT),
    (_hubs.ModelScope, "a/b.json", "https://e/api/v1/models/o/n/repo?Revision=%s&FilePath=a%%2Fb.json" % COMMIT),
])
def test_file_urls(hub, path, url):
    assert hub("o/n", "/tmp/x").file_urls(["https://e"], path, COMMIT) == [("https://e", url)]


def test_url_list_derives_its_commit_from_the_content():
    files = [{"path": "b.json", "sha256": "b" * 64}, {"path": "a.json", "sha256": "a" * 64, "url": "https://h:1/a"}]
    hub = _hubs.UrlList("", "/srv/models/custom/")
    params = {"files": files, "commit": None}
    commit, listed = hub.local_listing(params, ["https://files.example/base"])
    assert hub.repo_id == "url/custom" and sorted(listed) == ["a.json", "b.json"]
    expected = hashlib.sha1(json.dumps([["a.json", "a" * 64], ["b.json", "b" * 64]]).encode()).hexdigest()
    assert commit == expected  # the id every earlier release recorded: kept
    assert hub.file_urls(["https://files.example/base"], "b.json", commit) == [
        ("https://files.example/base", "https://files.example/base/b.json")]
    assert hub.file_urls([], "a.json", commit) == [("https://h:1", "https://h:1/a")]
