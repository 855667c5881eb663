"""A file corrupted in the mirror's store, with the real server on loopback: never served whole, quarantined
(503 until repaired), repaired by `autoglm-mirror verify --src`; and the store's copies are never hard links."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.mirror import MIRROR_SRC, MirrorProcess, ingest

REPO_ID = "test-org/integrity"
COMMIT = "4" * 40
SHARD = "model-00002-of-00003.safetensors"


def corrupt(path: Path) -> None:
    """Flip bytes in the middle, keeping size and mtime (a failing disk, or a careless operator)."""
    st = path.stat()
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(b ^ 0xFF for b in os.pread(fd, 16, st.st_size // 2)), st.st_size // 2)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def raw_get(url: str, path: str, extra: str = "", timeout: float = 20.0) -> tuple[bytes, bytes]:
    """(head, body) of one GET on a fresh connection, reading until the server closes it."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (path, extra)).encode())
        out = b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
    head, _unused, body = out.partition(b"\r\n\r\n")
    return head, body


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    raise AssertionError(head)


def verify_cli(data: Path, *extra: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "autoglm_mirror", "verify", "--data", str(data), "--repo", REPO_ID,
                           "--commit", COMMIT, *extra], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(MIRROR_SRC)), check=False)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {"stderr": proc.stderr}


@pytest.fixture
def store(tmp_path, tiny_model_dir) -> tuple[Path, Path, Path]:
    """(data dir, the seed's verified copy, the store's copy of SHARD) with SHARD corrupted in the store only."""
    seed = tmp_path / "seed"
    shutil.copytree(tiny_model_dir, seed)
    data = tmp_path / "data"
    ingest(data, REPO_ID, seed, COMMIT, ["main"], (), "--link")  # --link is ignored now: a copy
    stored = data / "repos" / REPO_ID / "snapshots" / COMMIT / SHARD
    assert stored.stat().st_ino != (seed / SHARD).stat().st_ino and stored.stat().st_nlink == 1
    corrupt(stored)
    assert hashlib.sha256(stored.read_bytes()).digest() != hashlib.sha256((seed / SHARD).read_bytes()).digest()
    return data, seed, stored


def test_a_corrupted_file_is_cut_short_then_refused_until_repaired(store, tmp_path):
    data, seed, stored = store
    good = hashlib.sha256((seed / SHARD).read_bytes()).hexdigest()
    url_path = "/%s/resolve/main/%s" % (REPO_ID, SHARD)
    with MirrorProcess(data, log_dir=tmp_path) as server:
        head, body = raw_get(server.url, url_path)
        assert head.startswith(b"HTTP/1.1 200")
        assert len(body) < content_length(head) == stored.stat().st_size  # a short read, never the whole bad file
        head, body = raw_get(server.url, url_path)
        assert head.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1" in head
        assert b"\r\nX-Error-Code: FileQuarantined" in head and b"quarantined" in body
        head, _unused = raw_get(server.url, "/api/v1/models/%s/repo?Revision=main&FilePath=%s" % (REPO_ID, SHARD))
        assert head.startswith(b"HTTP/1.1 503")  # one file, whichever API asks
        head, _unused = raw_get(server.url, "/%s/resolve/main/config.json" % REPO_ID)
        assert head.startswith(b"HTTP/1.1 200")  # the others are still served
        assert "QUARANTINED %s@%s/%s" % (REPO_ID, COMMIT, SHARD) in server.log()

        rc, found = verify_cli(data, "--dry-run", "--src", str(seed))
        assert rc == 0 and found["bad"] == [SHARD] and found["repaired"] == [] and found["changed"] is True
        rc, repaired = verify_cli(data, "--src", str(seed))
        assert rc == 0 and repaired["repaired"] == [SHARD] and repaired["changed"] is True
        aside = Path(repaired["quarantined"][0])
        assert aside.is_file() and aside.is_relative_to(data / "quarantine" / REPO_ID / COMMIT)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == good
        assert stored.stat().st_ino != (seed / SHARD).stat().st_ino

        head, body = raw_get(server.url, url_path)  # a new identity: served again, hashed on the way
        assert head.startswith(b"HTTP/1.1 200") and hashlib.sha256(body).hexdigest() == good
        rc, again = verify_cli(data, "--src", str(seed))
        assert rc == 0 and again["changed"] is False and again["hashed"] == 0  # the rerun is a stat per file


def test_a_range_of_a_corrupted_file_is_refused_before_any_byte(store, tmp_path):
    data, _seed, _stored = store
    with MirrorProcess(data, log_dir=tmp_path) as server:
        head, body = raw_get(server.url, "/%s/resolve/main/%s" % (REPO_ID, SHARD), "Range: bytes=10-99\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"quarantined" in body
        head, body = raw_get(server.url, "/%s/resolve/main/config.json" % REPO_ID, "Range: bytes=0-3\r\n")
        assert head.startswith(b"HTTP/1.1 206") and len(body) == 4


def test_ranges_of_a_good_file_are_served_after_one_whole_hash(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    ingest(data, REPO_ID, tiny_model_dir, COMMIT, ["main"])
    (data / "repos" / REPO_ID / "snapshots" / (COMMIT + ".verified.json")).unlink()  # nothing known good yet
    whole = (tiny_model_dir / SHARD).read_bytes()
    with MirrorProcess(data, log_dir=tmp_path) as server:
        head, body = raw_get(server.url, "/%s/resolve/main/%s" % (REPO_ID, SHARD), "Range: bytes=100-199\r\n")
        assert head.startswith(b"HTTP/1.1 206") and body == whole[100:200]
        head, body = raw_get(server.url, "/%s/resolve/main/%s" % (REPO_ID, SHARD))
        assert head.startswith(b"HTTP/1.1 200") and body == whole
        assert "QUARANTINED" not in server.log()


def test_huggingface_hub_never_ends_up_with_the_bad_file(store, tmp_path):
    data, _seed, _stored = store
    with MirrorProcess(data, log_dir=tmp_path) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="10", HF_HUB_DOWNLOAD_TIMEOUT="10")
        code = ("from huggingface_hub import hf_hub_download\n"
                "try:\n    print('GOT', hf_hub_download(%r, %r, local_dir='out'))\n"
                "except Exception as err:\n    print('FAILED', type(err).__name__, err)\n" % (REPO_ID, SHARD))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env,
                              cwd=tmp_path, check=False)
        assert "FAILED" in proc.stdout, proc.stdout + proc.stderr[-2000:]
        assert not (tmp_path / "out" / SHARD).exists()  # only an .incomplete part, which it resumes elsewhere
        assert time.monotonic() - started < 120  # Retry-After is short: the client gives up (or moves on) soon
        log = server.log()
        assert "QUARANTINED" in log and '" 503 ' in log


def test_repair_replaces_a_missing_file_and_breaks_a_hard_link(tmp_path, tiny_model_dir):
    seed = tmp_path / "seed"
    shutil.copytree(tiny_model_dir, seed)
    data = tmp_path / "data"
    ingest(data, REPO_ID, seed, COMMIT, ["main"])
    snap = data / "repos" / REPO_ID / "snapshots" / COMMIT
    (snap / "config.json").unlink()
    (snap / SHARD).unlink()
    os.link(seed / SHARD, snap / SHARD)  # as the old publish left it: one inode for the seed and the mirror
    rc, report = verify_cli(data)
    assert rc == 3 and report["missing"] == ["config.json"] and report["changed"] is False  # no --src: report only
    rc, report = verify_cli(data, "--src", str(seed))
    assert rc == 0 and report["missing"] == ["config.json"] and report["linked"] == [SHARD]
    assert sorted(report["repaired"]) == sorted(["config.json", SHARD]) and report["quarantined"] == []
    assert (snap / SHARD).stat().st_ino != (seed / SHARD).stat().st_ino
    assert (snap / SHARD).read_bytes() == (seed / SHARD).read_bytes() and (snap / "config.json").is_file()


def test_repair_refuses_a_source_that_is_bad_too(store):
    data, seed, _stored = store
    corrupt(seed / SHARD)
    rc, report = verify_cli(data, "--src", str(seed))
    assert rc == 1 and "verify %s first" % seed in report["stderr"]
