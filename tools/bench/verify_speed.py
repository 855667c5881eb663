#!/usr/bin/env python3
"""Benchmark: how fast model_verify checks a snapshot, side by side with sha256sum and huggingface_hub.

    .venv/bin/python tools/bench/verify_speed.py [--dir /var/tmp/autoglm-verify-bench]
        [--large 2] [--large-size 1.5G] [--small 8] [--jobs 0] [--keep]

Builds (once; reused while the parameters match) a synthetic snapshot of N large safetensors
files plus small json files, with its .autoglm/manifest.json, then times, cold (page cache
dropped before each run when this process may write /proc/sys/vm/drop_caches):
  * one large file:  sha256sum | openssl dgst | huggingface_hub | model_verify
  * every file:      sha256sum serial | huggingface_hub | model_verify (one thread per core)
  * a rerun over unchanged files with the verify cache: in-process, and as a module subprocess
huggingface_hub's row is `verify_maps`, the local hashing step of `hf cache verify`
(HfApi.verify_repo_checksums), fed the manifest instead of the Hub's tree (no hub here).
Prints a table; the goals from issue 5 are checked at the end (a report, not a test).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing, _manifest, _verify

BLOCK = 16 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def write_safetensors(path: Path, size: int, seed: int) -> None:
    """A valid safetensors file of exactly `size` bytes: one U8 tensor, data from a rotated random block."""
    import random

    data_len = size - 8 - 128
    for _unused in range(5):  # the header's length depends on the digits of data_len: iterate to a fixed point
        header = json.dumps({"weight": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}})
        header += " " * (-len(header) % 8)
        if size - 8 - len(header) == data_len:
            break
        data_len = size - 8 - len(header)
    assert 8 + len(header) + data_len == size
    block = random.Random(seed).randbytes(BLOCK)
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header.encode())
        left, turn = data_len, seed
        while left > 0:
            cut = (turn * 7919 * 4096) % BLOCK
            chunk = memoryview(block[cut:] + block[:cut])[:left]
            handle.write(chunk)
            left -= len(chunk)
            turn += 1


def build(root: Path, large: int, large_size: int, small: int) -> dict:
    marker = root / ".autoglm" / "bench-params.json"
    params = {"large": large, "large_size": large_size, "small": small}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return _manifest.load(_manifest.manifest_path(str(root)))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    names = []
    for index in range(1, large + 1):
        name = "model-%05d-of-%05d.safetensors" % (index, large)
        write_safetensors(root / name, large_size, index)
        names.append(name)
    for index in range(small):
        name = "config-%d.json" % index
        (root / name).write_text(json.dumps({"index": index, "pad": "x" * (1000 * (index + 1))}))
        names.append(name)
    results = _hashing.hash_files({str(root / name): _hashing.ALGORITHMS for name in names})
    files = [{"path": name, "size": results[str(root / name)]["size"], "endpoint": "http://127.0.0.1",
              "sha256": results[str(root / name)]["sha256"] if name.endswith(".safetensors") else None,
              "git_sha1": None if name.endswith(".safetensors") else results[str(root / name)]["git_sha1"]}
             for name in names]
    manifest = _manifest.new("huggingface", "bench/synthetic", "main", "0" * 40, files)
    _manifest.write(str(root), manifest)
    marker.write_text(json.dumps(params))
    print("built %d files (%.2f GB) in %.1f s" % (len(names), sum(f["size"] for f in files) / 1e9,
                                                  time.monotonic() - started))
    return manifest


def drop_caches() -> bool:
    """Empty the page cache (root only; in an unprivileged container this fails and runs are warm)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def cached_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(function, cold: bool) -> float:
    if cold:
        drop_caches()
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def run_sha256sum(paths) -> None:
    subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


def run_openssl(paths) -> None:
    subprocess.run(["openssl", "dgst", "-sha256", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


def run_hf(root: Path, entries) -> None:
    from huggingface_hub.utils._verification import verify_maps

    remote = {e["path"]: SimpleNamespace(lfs={"sha256": e["sha256"]} if e["sha256"] else None, blob_id=e["git_sha1"])
              for e in entries}
    local = {e["path"]: root / e["path"] for e in entries}
    result = verify_maps(remote_by_path=remote, local_by_path=local, revision="main", verified_path=root)
    assert not result.mismatches, result.mismatches


def run_verify(root: Path, entries, mode: str, jobs: int) -> dict:
    expected = {e["path"]: {"size": e["size"], "sha256": e["sha256"], "git_sha1": e["git_sha1"]} for e in entries}
    result = _verify.Verifier(str(root), expected, mode=mode, jobs=jobs, extra_files="ignore").run()
    assert not result["mismatched"] and not result["missing"], result
    return result


def run_module(root: Path) -> None:
    args = REPO / ".cache" / ("bench-verify-args-%d.json" % os.getpid())
    args.parent.mkdir(exist_ok=True)
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"path": str(root), "extra_files": "ignore"}}))
    try:
        proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / "model_verify.py"), str(args)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "collections")), check=False)
    finally:
        args.unlink()
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result.get("msg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", default="/var/tmp/autoglm-verify-bench")
    parser.add_argument("--large", type=int, default=2)
    parser.add_argument("--large-size", default="1.5G")
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=0, help="model_verify threads (0: one per core)")
    parser.add_argument("--keep", action="store_true", help="keep the snapshot for the next run")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    manifest = build(root, args.large, parse_size(args.large_size), args.small)
    entries = manifest["files"]
    big = [e for e in entries if e["path"].endswith(".safetensors")]
    paths = [root / e["path"] for e in entries]
    total = sum(e["size"] for e in entries)

    before = cached_bytes()
    cold = drop_caches()
    dropped = before - cached_bytes()
    print("page cache drop: %s (%.2f GB released)" % ("works" if cold else "NOT possible here, runs are warm",
                                                      dropped / 1e9))
    # The cache does not trust entries whose ctime is within RACY_WINDOW_NS of the look; let it pass.
    newest = max(os.stat(p).st_ctime_ns for p in paths)
    time.sleep(max(0.0, (newest + _verify.RACY_WINDOW_NS) / 1e9 - time.time() + 0.2))

    rows = []

    def row(scenario, tool, seconds, size, base=None):
        rows.append((scenario, tool, seconds, size / seconds / 1e9, (base / seconds) if base else None))

    one = root / big[0]["path"]
    sha_one = timed(lambda: run_sha256sum([one]), cold)
    row("1 large file", "sha256sum", sha_one, big[0]["size"], sha_one)
    if shutil.which("openssl"):
        row("1 large file", "openssl dgst -sha256", timed(lambda: run_openssl([one]), cold), big[0]["size"], sha_one)
    row("1 large file", "huggingface_hub verify_maps", timed(lambda: run_hf(root, big[:1]), cold), big[0]["size"],
        sha_one)
    row("1 large file", "model_verify (full)", timed(lambda: run_verify(root, big[:1], "full", args.jobs), cold),
        big[0]["size"], sha_one)

    label = "%d files, %.1f GB" % (len(entries), total / 1e9)
    sha_all = timed(lambda: run_sha256sum(paths), cold)
    row(label, "sha256sum (serial)", sha_all, total, sha_all)
    row(label, "huggingface_hub verify_maps", timed(lambda: run_hf(root, entries), cold), total, sha_all)
    full = timed(lambda: run_verify(root, entries, "full", args.jobs), cold)
    row(label, "model_verify (full, %d threads)" % (args.jobs or _hashing.default_jobs()), full, total, sha_all)

    # The same work with the files in the page cache: what the CPU does, without the disk.
    label = "%d files, page cache" % len(entries)
    run_verify(root, entries, "full", args.jobs)
    sha_hot = timed(lambda: run_sha256sum(paths), False)
    row(label, "sha256sum (serial)", sha_hot, total, sha_hot)
    if shutil.which("openssl"):
        row(label, "openssl dgst -sha256 (serial)", timed(lambda: run_openssl(paths), False), total, sha_hot)
    row(label, "huggingface_hub verify_maps", timed(lambda: run_hf(root, entries), False), total, sha_hot)
    row(label, "model_verify (full, 1 thread)", timed(lambda: run_verify(root, entries, "full", 1), False), total,
        sha_hot)
    hot = timed(lambda: run_verify(root, entries, "full", args.jobs), False)
    row(label, "model_verify (full, %d threads)" % (args.jobs or _hashing.default_jobs()), hot, total, sha_hot)

    warm = min(timed(lambda: run_verify(root, entries, "cached", args.jobs), False) for _unused in range(5))
    rows.append(("rerun, cache", "model_verify in-process", warm, None, sha_all / warm))
    module = min(timed(lambda: run_module(root), False) for _unused in range(3))
    rows.append(("rerun, cache", "model_verify module process", module, None, sha_all / module))

    print("\nCPU cores: %d   snapshot: %s   cold runs: %s\n" % (os.cpu_count(), root, "yes" if cold else "no"))
    print("%-22s %-34s %10s %8s %12s" % ("scenario", "tool", "seconds", "GB/s", "vs sha256sum"))
    for scenario, tool, seconds, rate, ratio in rows:
        print("%-22s %-34s %10.3f %8s %12s" % (scenario, tool, seconds, "%.2f" % rate if rate else "-",
                                               "%.2fx" % ratio if ratio else "-"))
    one_ratio = sha_one / next(r for r in rows if r[0] == "1 large file" and r[1].startswith("model_verify"))[2]
    print("\ngoals: one file >= 0.90x sha256sum: %.2fx %s | all files >= 1.7x serial sha256sum: %.2fx %s | "
          "cached rerun < 50 ms for %d files: %.1f ms in-process %s (%.0f ms as a module process)"
          % (one_ratio, "ok" if one_ratio >= 0.9 else "MISSED", sha_all / full, "ok" if sha_all / full >= 1.7 else
             "MISSED", len(entries), warm * 1000, "ok" if warm < 0.05 else "MISSED", module * 1000))
    print("       page cache warm: all files %.2fx serial sha256sum" % (sha_hot / hot))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
