"""The mirror against the official huggingface_hub client and transformers, plus the raw HF API shapes."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.mirror import DEV_COMMIT, PRIVATE_REPO, TINY_COMMIT, TINY_REPO, TOKEN


def hf_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def run_client(tmp_path: Path, endpoint: str, code: str) -> subprocess.CompletedProcess:
    """Run huggingface_hub in a fresh interpreter: its settings are read from the environment at import."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=hf_env(tmp_path, endpoint), cwd=tmp_path, check=False)


def request(url: str, method: str = "GET", path: str = "/", headers: dict | None = None, body: bytes | None = None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_snapshot_download_gets_every_file_with_matching_hashes_and_transformers_loads_it(mirror, tiny_model_dir, tmp_path):
    proc = run_client(tmp_path, mirror.url, (
        "from huggingface_hub import snapshot_download\n"
        "print(snapshot_download(%r, local_dir='model'))\n" % TINY_REPO))
    assert proc.returncode == 0, proc.stderr
    local = tmp_path / "model"
    got = sorted(p.name for p in local.iterdir() if p.is_file())
    assert got == sorted(p.name for p in tiny_model_dir.iterdir())
    _unused, body = request(mirror.url, path="/api/models/%s/tree/main?recursive=true" % TINY_REPO)
    tree = {e["path"]: e for e in json.loads(body)}
    for name in got:
        entry = tree[name]
        if "lfs" in entry:  # weights: the sha256 the listing promises
            assert sha256(local / name) == entry["lfs"]["oid"] == sha256(tiny_model_dir / name)
        else:  # small git files: the git blob sha1
            assert git_sha1(local / name) == entry["oid"] == git_sha1(tiny_model_dir / name)
    assert {n for n, e in tree.items() if "lfs" in e} == {n for n in got if n.endswith(".safetensors")}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(local))
    tokenizer = AutoTokenizer.from_pretrained(str(local))
    ids = tokenizer("Open the settings app", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_hf_hub_download_resolves_a_tag_and_a_branch_to_their_commits(mirror, tmp_path):
    proc = run_client(tmp_path, mirror.url, (
        "import json\n"
        "from huggingface_hub import hf_hub_download\n"
        "from huggingface_hub.errors import EntryNotFoundError\n"
        "tag = hf_hub_download(%r, 'config.json', revision='v1.0', cache_dir='c')\n"
        "dev = hf_hub_download(%r, 'README.md', revision='dev', cache_dir='c')\n"
        "try:\n"
        "    hf_hub_download(%r, 'README.md', revision='main', cache_dir='c'); missing = 'downloaded'\n"
        "except EntryNotFoundError as err:\n"
        "    missing = type(err).__name__\n"
        "print(json.dumps([tag, dev, missing]))\n" % (TINY_REPO, TINY_REPO, TINY_REPO)))
    assert proc.returncode == 0, proc.stderr
    tag, dev, missing = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/snapshots/%s/" % TINY_COMMIT in tag and "/snapshots/%s/" % DEV_COMMIT in dev
    refs = tmp_path / "c" / ("models--" + TINY_REPO.replace("/", "--")) / "refs"
    assert (refs / "v1.0").read_text() == TINY_COMMIT and (refs / "dev").read_text() == DEV_COMMIT
    assert "tiny-qwen2" in Path(dev).read_text()
    assert missing == "RemoteEntryNotFoundError"  # the client understood X-Error-Code: EntryNotFound


def test_paginated_tree_paths_info_and_model_info_through_the_client(mirror_factory, tiny_model_dir, tmp_path):
    server = mirror_factory(page_size=3)
    proc = run_client(tmp_path, server.url, (
        "import json\n"
        "from huggingface_hub import HfApi\n"
        "api = HfApi()\n"
        "tree = [f.path for f in api.list_repo_tree(%r, recursive=True)]\n"
        "info = api.get_paths_info(%r, ['config.json', 'model-00002-of-00003.safetensors', 'nope.bin'])\n"
        "model = api.model_info(%r, revision='dev', files_metadata=True)\n"
        "print(json.dumps({'tree': tree, 'info': [(i.path, i.blob_id, i.lfs.sha256 if i.lfs else None) for i in info],\n"
        "  'sha': model.sha, 'siblings': {s.rfilename: s.size for s in model.siblings}}))\n" % ((TINY_REPO,) * 3)))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["tree"]) == sorted(p.name for p in tiny_model_dir.iterdir())
    assert server.log().count("/tree/main") >= 3  # 8 entries, 3 a page: the client followed Link rel="next"
    assert out["info"] == [["config.json", git_sha1(tiny_model_dir / "config.json"), None],
                           ["model-00002-of-00003.safetensors", out["info"][1][1],
                            sha256(tiny_model_dir / "model-00002-of-00003.safetensors")]]
    assert out["sha"] == DEV_COMMIT and "README.md" in out["siblings"]
    assert out["siblings"]["config.json"] == (tiny_model_dir / "config.json").stat().st_size


def test_resolve_headers_carry_commit_etag_and_size(mirror, tiny_model_dir):
    shard = "model-00001-of-00003.safetensors"
    resp, body = request(mirror.url, "HEAD", "/%s/resolve/v1.0/%s" % (TINY_REPO, shard),
                         {"Accept-Encoding": "identity"})
    assert resp.status == 200 and body == b""
    size = (tiny_model_dir / shard).stat().st_size
    assert resp.getheader("X-Repo-Commit") == TINY_COMMIT
    assert resp.getheader("ETag") == resp.getheader("X-Linked-Etag") == '"%s"' % sha256(tiny_model_dir / shard)
    assert int(resp.getheader("X-Linked-Size")) == int(resp.getheader("Content-Length")) == size
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, _unused = request(mirror.url, "HEAD", "/%s/resolve/main/config.json" % TINY_REPO)
    assert resp.getheader("ETag") == '"%s"' % git_sha1(tiny_model_dir / "config.json")


@pytest.mark.parametrize(("header", "expect"), [
    ("bytes=0-99", (0, 99)),
    ("bytes=1000-", (1000, None)),
    ("bytes=-500", (-500, None)),
    ("bytes=10-999999999", (10, None)),
])
def test_range_requests_answer_206_with_content_range(mirror, tiny_model_dir, header, expect):
    shard = "model-00003-of-00003.safetensors"
    data = (tiny_model_dir / shard).read_bytes()
    start, end = expect
    start = len(data) + start if start < 0 else start
    end = len(data) - 1 if end is None else end
    resp, body = request(mirror.url, path="/%s/resolve/main/%s" % (TINY_REPO, shard), headers={"Range": header})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == "bytes %d-%d/%d" % (start, end, len(data))
    assert body == data[start: end + 1]


def test_unsatisfiable_range_is_416_and_multi_range_gets_the_whole_file(mirror, tiny_model_dir):
    size = (tiny_model_dir / "config.json").stat().st_size
    path = "/%s/resolve/main/config.json" % TINY_REPO
    resp, _unused = request(mirror.url, path=path, headers={"Range": "bytes=%d-" % size})
    assert resp.status == 416 and resp.getheader("Content-Range") == "bytes */%d" % size
    resp, body = request(mirror.url, path=path, headers={"Range": "bytes=0-1,5-6"})
    assert resp.status == 200 and body == (tiny_model_dir / "config.json").read_bytes()


def test_keep_alive_serves_many_requests_on_one_connection(mirror):
    host, port = mirror.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for rev in ("main", "v1.0", "dev", TINY_COMMIT):
        conn.request("GET", "/%s/resolve/%s/config.json" % (TINY_REPO, rev), headers={"Range": "bytes=0-1"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == b"{\n"
    conn.request("GET", "/api/models/%s/revision/%s" % (TINY_REPO, "v1.0"))
    assert json.loads(conn.getresponse().read())["sha"] == TINY_COMMIT
    conn.close()


@pytest.mark.parametrize(("path", "code"), [
    ("/api/models/test-org/absent/revision/main", "RepoNotFound"),
    ("/api/models/%s/revision/no-such-branch" % TINY_REPO, "RevisionNotFound"),
    ("/api/models/%s/revision/%s" % (TINY_REPO, "f" * 40), "RevisionNotFound"),
    ("/%s/resolve/main/absent.bin" % TINY_REPO, "EntryNotFound"),
    ("/test-org/absent/resolve/main/config.json", "RepoNotFound"),
    ("/api/models/%s/tree/main/absent-dir" % TINY_REPO, "EntryNotFound"),
])
def test_missing_things_are_404_with_hub_error_codes(mirror, path, code):
    resp, body = request(mirror.url, path=path)
    assert resp.status == 404 and resp.getheader("X-Error-Code") == code
    assert "error" in json.loads(body)


def test_protected_repo_needs_the_bearer_token_and_no_token_reaches_the_log(mirror, tmp_path):
    path = "/%s/resolve/main/config.json" % PRIVATE_REPO
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        resp, _unused = request(mirror.url, path=path, headers=headers)
        assert resp.status == 401 and "Bearer" in resp.getheader("WWW-Authenticate")
    resp, _unused = request(mirror.url, path="/api/models/%s/revision/main" % PRIVATE_REPO)
    assert resp.status == 401
    resp, body = request(mirror.url, path=path, headers={"Authorization": "Bearer " + TOKEN})
    assert resp.status == 200 and json.loads(body)["model_type"] == "qwen2"
    proc = run_client(tmp_path, mirror.url, (
        "from huggingface_hub import snapshot_download\n"
        "print(snapshot_download(%r, local_dir='p', token=%r))\n" % (PRIVATE_REPO, TOKEN)))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "model-00001-of-00003.safetensors").is_file()
    resp, _unused = request(mirror.url, path="/%s/resolve/main/config.json" % TINY_REPO)
    assert resp.status == 200  # public repos need no token
    log = mirror.log()
    assert PRIVATE_REPO in log and TOKEN not in log and "wrong-token" not in log
