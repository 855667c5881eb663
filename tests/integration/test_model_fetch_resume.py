"""A model_fetch killed with SIGKILL midway resumes without fetching finished ranges again.

The module runs as a real subprocess (as Ansible runs it) against a rate-limited mirror, is killed once
about half of a large file is on disk, then runs again. The mirror's access log counts every body byte
it sent for the file across both runs; what was sent beyond the file's size is what the kill cost.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.mirror import ingest
from support.testmodel import load_builder

REPO = Path(__file__).resolve().parents[2]
BIG_REPO = "bench-org/big"
BIG_COMMIT = "4" * 40
SHARD = "model-00001-of-00001.safetensors"
SHARD_SIZE = 48 << 20
CONNECTIONS = 4
CHUNK_MB = 2


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("big-src")
    load_builder().build_synthetic_snapshot(src, 1, SHARD_SIZE)
    data = tmp_path_factory.mktemp("big-mirror") / "data"
    ingest(data, BIG_REPO, src, BIG_COMMIT, ["main"], (), "--link")
    return data


def module_args(dest: Path, url: str) -> dict:
    return {"dest": str(dest), "repo_id": BIG_REPO, "endpoints": [url], "connections": CONNECTIONS,
            "chunk_size_mb": CHUNK_MB, "timeout": 10}


def start_module(args: dict, tmp_path: Path) -> subprocess.Popen:
    args_file = tmp_path / ("args-%d.json" % time.monotonic_ns())
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    return subprocess.Popen([sys.executable, str(REPO / "plugins" / "modules" / "model_fetch.py"), str(args_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO / "collections")))


def shard_bytes_sent(log: str) -> int:
    return sum(int(n) for n in re.findall(r'"GET /%s/resolve/\w+/%s" \d+ (\d+)' % (BIG_REPO, SHARD), log))


def part_of(dest: Path, path: str) -> Path:
    """Where model_fetch keeps the part of path: its state folder, by a hash of the path."""
    return dest / ".autoglm" / "parts" / (hashlib.sha256(path.encode()).hexdigest()[:40] + ".part")


def recorded(dest: Path) -> int:
    try:
        data = json.loads(part_of(dest, SHARD).with_suffix(".part.ranges").read_text())
    except (OSError, ValueError):
        return 0
    return sum(b - a for a, b in data["done"])


def test_sigkill_midway_then_resume_fetches_at_most_one_chunk_per_connection_again(big_data, mirror_factory, tmp_path):
    # 4 connections x 3 MB/s: the 48 MiB shard takes about 4 s, long enough to kill it in the middle.
    slow = mirror_factory(data=big_data, rate_limit=3_000_000)
    dest = tmp_path / "model"
    proc = start_module(module_args(dest, slow.url), tmp_path)
    deadline = time.monotonic() + 60
    while recorded(dest) < SHARD_SIZE * 0.45 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = recorded(dest)
    assert SHARD_SIZE * 0.3 < done_at_kill < SHARD_SIZE, "the kill did not land midway (%d bytes recorded)" % done_at_kill
    assert not (dest / SHARD).exists() and part_of(dest, SHARD).exists()
    time.sleep(0.3)  # let the server log the connections the kill broke
    sent_before = shard_bytes_sent(slow.log())

    fast = mirror_factory(data=big_data)
    proc = start_module(module_args(dest, fast.url), tmp_path)
    out, _err = proc.communicate(timeout=120)
    result = json.loads(out)
    assert proc.returncode == 0, result.get("msg")
    assert result["bytes_resumed"] >= done_at_kill
    sent_after = shard_bytes_sent(fast.log())
    assert sent_after == SHARD_SIZE - result["bytes_resumed"]
    refetched = sent_before + sent_after - SHARD_SIZE
    assert 0 <= refetched <= CONNECTIONS * CHUNK_MB << 20, "refetched %d bytes" % refetched
    digest = hashlib.sha256((dest / SHARD).read_bytes()).hexdigest()
    assert digest == hashlib.sha256((big_data / "repos" / BIG_REPO / "snapshots" / BIG_COMMIT / SHARD).read_bytes()).hexdigest()
    assert not part_of(dest, SHARD).exists() and not list(dest.rglob("*.ranges"))


def test_dropped_connections_resume_from_the_recorded_ranges(big_data, mirror_factory, tmp_path):
    # Every response is cut after 3 MB: the download still completes, each retry starting where the last stopped.
    server = mirror_factory(data=big_data, drop_after=3_000_000)
    args = dict(module_args(tmp_path / "model", server.url), chunk_size_mb=8)
    proc = start_module(args, tmp_path)
    out, _unused = proc.communicate(timeout=120)
    result = json.loads(out)
    assert proc.returncode == 0, result.get("msg")
    assert shard_bytes_sent(server.log()) == SHARD_SIZE  # nothing was fetched twice
