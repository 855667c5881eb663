"""ModelScope-shaped listing and ranged download; path traversal refused in every form."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
from urllib.parse import quote

import pytest
from support.mirror import PRIVATE_REPO, TINY_COMMIT, TINY_REPO, TOKEN, ingest


def request(url: str, path: str, method: str = "GET", headers: dict | None = None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out exactly as written
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_modelscope_file_list_has_sha256_for_every_file(mirror, tiny_model_dir):
    resp, body = request(mirror.url, "/api/v1/models/%s/repo/files?Revision=v1.0&Recursive=True" % TINY_REPO)
    assert resp.status == 200
    doc = json.loads(body)
    assert doc["Code"] == 200 and doc["Success"] is True
    files = {f["Path"]: f for f in doc["Data"]["Files"]}
    assert set(files) == {p.name for p in tiny_model_dir.iterdir()}
    for path, f in files.items():
        data = (tiny_model_dir / path).read_bytes()
        assert f["Type"] == "blob" and f["Size"] == len(data) and f["Revision"] == TINY_COMMIT
        assert f["Sha256"] == hashlib.sha256(data).hexdigest()
        assert f["IsLFS"] is path.endswith(".safetensors")


def test_modelscope_default_revision_falls_back_to_main_and_revisions_are_listed(mirror):
    resp, body = request(mirror.url, "/api/v1/models/%s/repo/files?Recursive=True" % TINY_REPO)
    assert resp.status == 200 and json.loads(body)["Data"]["Files"][0]["Revision"] == TINY_COMMIT
    resp, body = request(mirror.url, "/api/v1/models/%s/revisions" % TINY_REPO)
    rev_map = json.loads(body)["Data"]["RevisionMap"]
    assert {b["Revision"] for b in rev_map["Branches"]} == {"main", "dev"}
    assert [(t["Revision"], t["CommitId"]) for t in rev_map["Tags"]] == [("v1.0", TINY_COMMIT)]


def test_modelscope_ranged_download(mirror, tiny_model_dir):
    shard = "model-00002-of-00003.safetensors"
    data = (tiny_model_dir / shard).read_bytes()
    path = "/api/v1/models/%s/repo?Revision=main&FilePath=%s" % (TINY_REPO, quote(shard))
    resp, body = request(mirror.url, path, headers={"Range": "bytes=100-4195"})
    assert resp.status == 206 and body == data[100:4196]
    assert resp.getheader("Content-Range") == "bytes 100-4195/%d" % len(data)
    resp, body = request(mirror.url, path)
    assert resp.status == 200 and hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    resp, body = request(mirror.url, "/api/v1/models/%s/repo?Revision=main&FilePath=absent.bin" % TINY_REPO)
    assert resp.status == 404 and json.loads(body)["Success"] is False


def test_modelscope_protected_repo_needs_the_token(mirror):
    path = "/api/v1/models/%s/repo/files?Recursive=True" % PRIVATE_REPO
    assert request(mirror.url, path)[0].status == 401
    assert request(mirror.url, path, headers={"Authorization": "Bearer " + TOKEN})[0].status == 200


TRAVERSALS = [
    "/%s/resolve/main/../../../../../etc/passwd" % TINY_REPO,
    "/%s/resolve/main/%%2e%%2e/%%2e%%2e/%%2e%%2e/%%2e%%2e/etc/passwd" % TINY_REPO,
    "/%s/resolve/main/..%%2F..%%2F..%%2F..%%2Fetc%%2Fpasswd" % TINY_REPO,
    "/%s/resolve/main//etc/passwd" % TINY_REPO,
    "/%s/resolve/main/%%2Fetc%%2Fpasswd" % TINY_REPO,
    "/%s/resolve/main/..%%5C..%%5Cetc%%5Cpasswd" % TINY_REPO,
    "/%s/resolve/main/config.json%%00.txt" % TINY_REPO,
    "/test-org/..%2F..%2F..%2Fetc/resolve/main/passwd",
    "/..%2F..%2F../etc/resolve/main/passwd",
    "/%s/resolve/..%%2F..%%2F..%%2F/passwd" % TINY_REPO,
    "/api/models/%s/tree/main/..%%2F.." % TINY_REPO,
    "/api/models/..%2F..%2Fetc/passwd/revision/main",
    "/api/v1/models/%s/repo?Revision=main&FilePath=../../../../etc/passwd" % TINY_REPO,
    "/api/v1/models/%s/repo?Revision=main&FilePath=/etc/passwd" % TINY_REPO,
    "/api/v1/models/%s/repo?Revision=main&FilePath=%%2e%%2e%%2f%%2e%%2e%%2fetc%%2fpasswd" % TINY_REPO,
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(mirror, path):
    resp, body = request(mirror.url, path)
    assert resp.status in (400, 404), (resp.status, body[:200])
    assert b"root:" not in body


def test_symlink_leading_out_of_the_data_dir_is_not_followed(mirror_factory, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    ingest(data, "test-org/linked", tiny_model_dir, "4" * 40)
    snap = data / "repos" / "test-org" / "linked" / "snapshots" / ("4" * 40)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret outside the data dir\n")
    os.unlink(snap / "config.json")
    os.symlink(secret, snap / "config.json")
    (snap / "sub").mkdir()
    os.unlink(snap / "generation_config.json")
    shutil.rmtree(snap / "sub")
    os.symlink(tmp_path, snap / "sub")  # a directory link out of the snapshot
    os.symlink("sub/secret.txt", snap / "generation_config.json")
    server = mirror_factory(data=data)
    for name in ("config.json", "generation_config.json"):
        resp, body = request(server.url, "/test-org/linked/resolve/main/%s" % name)
        assert resp.status == 404 and b"secret" not in body
    assert "resolves outside the snapshot" in server.log()
    resp, _unused = request(server.url, "/test-org/linked/resolve/main/tokenizer.json")
    assert resp.status == 200  # the rest of the snapshot is still served
