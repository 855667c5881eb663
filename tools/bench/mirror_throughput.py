#!/usr/bin/env python3
"""Benchmark: the model mirror vs Debian's nginx serving the same large file on loopback.

    python3 tools/bench/mirror_throughput.py [--size 2G] [--streams 8] [--repeat 3] [--workdir DIR]

Writes one synthetic weights file (tools/testmodel/build_test_model.py synthetic), ingests it into a
mirror data dir (hard link), starts `python3 -m autoglm_mirror serve` and nginx (installed with apt
when missing; run with a private config on a free loopback port, sendfile on, no access log), warms
the page cache, then downloads with curl to /dev/null: the whole file over one connection, and the
file split into N ranged connections at once. Prints best-of-repeat MB/s for both and the ratio
(goal: the mirror at >= 80% of nginx). Needs root only to install nginx. Nothing is left running.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "bench/big"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_test_model", REPO / "tools/testmodel/build_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("nginx is not installed and installing it needs root: apt-get install nginx-light (or run as root)")
    print("installing nginx from the Debian archive ...", file=sys.stderr)
    # Keep the package's own service from starting on port 80 while it installs.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"], check=True, env=env)
    finally:
        if ours:
            policy.unlink()
    return shutil.which("nginx") or "/usr/sbin/nginx"


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("%s did not answer" % url)


def start_mirror(data: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(work / "mirror.log", "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    proc = subprocess.Popen([sys.executable, "-m", "autoglm_mirror", "serve", "--data", str(data), "--bind", "127.0.0.1",
                             "--port", str(port), "--quiet"], stdout=log, stderr=log,
                            env=dict(os.environ, PYTHONPATH=str(REPO / "mirror")))
    wait_http("http://127.0.0.1:%d/health" % port)
    return proc, "http://127.0.0.1:%d" % port


def start_nginx(nginx: str, root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    prefix = work / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        "%sworker_processes auto;\npid %s/nginx.pid;\nerror_log %s/logs/error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n"
        "  default_type application/octet-stream;\n"
        "  client_body_temp_path %s/tmp; proxy_temp_path %s/tmp; fastcgi_temp_path %s/tmp;\n"
        "  uwsgi_temp_path %s/tmp; scgi_temp_path %s/tmp;\n"
        "  server { listen 127.0.0.1:%d; root %s; }\n}\n"
        % (user, prefix, prefix, *([prefix] * 5), port, root))
    (prefix / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(prefix / "logs/stderr.log", "wb"))  # noqa: SIM115
    wait_http("http://127.0.0.1:%d/" % port + "config.json")
    return proc, "http://127.0.0.1:%d" % port


def curl_once(url: str, streams: int, size: int) -> float:
    """Seconds to fetch `size` bytes of url over `streams` parallel ranged connections (curl to /dev/null)."""
    step = -(-size // streams)
    procs = []
    start = time.monotonic()
    for i in range(streams):
        first, last = i * step, min(size, (i + 1) * step) - 1
        args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}"]
        if streams > 1:
            args += ["-r", "%d-%d" % (first, last)]
        procs.append(subprocess.Popen([*args, url], stdout=subprocess.PIPE))
    got = sum(int(p.communicate()[0] or 0) for p in procs)
    elapsed = time.monotonic() - start
    if got != size:
        raise RuntimeError("%s: got %d bytes of %d" % (url, got, size))
    return elapsed


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    builder = load_builder()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size", type=builder.parse_size, default=builder.parse_size("2G"))
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", help="keep the file here (reused when it has the right size)")
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is needed as the client: apt-get install curl")
    nginx = ensure_nginx()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mirror-bench-"))
    src = work / "src"
    big = src / "model-00001-of-00001.safetensors"
    if not big.exists() or big.stat().st_size != args.size:
        shutil.rmtree(src, ignore_errors=True)
        builder.build_synthetic_snapshot(src, shards=1, shard_size=args.size)
    data = work / "data"
    subprocess.run([sys.executable, "-m", "autoglm_mirror", "ingest", "--data", str(data), "--repo", REPO_ID,
                    "--src", str(src), "--link"], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(REPO / "mirror")))
    with open(big, "rb") as fh:  # warm the page cache: measure the servers, not the disk
        while fh.read(64 << 20):
            pass
    servers = []
    results: dict[str, dict[int, float]] = {}
    try:
        mirror, mirror_url = start_mirror(data, work)
        servers.append(mirror)
        nginx_proc, nginx_url = start_nginx(nginx, src, work)
        servers.append(nginx_proc)
        urls = {"nginx": nginx_url + "/" + big.name,
                "mirror": mirror_url + "/%s/resolve/main/%s" % (REPO_ID, big.name)}
        for name in urls:
            results[name] = {1: 0.0, args.streams: 0.0}
        for _unused in range(args.repeat):
            for streams in (1, args.streams):
                for name, url in urls.items():  # interleaved, so drift hits both alike
                    rate = args.size / curl_once(url, streams, args.size) / 1e6
                    results[name][streams] = max(results[name][streams], rate)
    finally:
        for proc in servers:
            stop(proc)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("file %.2f GiB on loopback, curl to /dev/null, best of %d, %d CPU cores" % (args.size / (1 << 30), args.repeat,
                                                                                      os.cpu_count() or 0))
    print("%-12s %12s %12s %10s" % ("connections", "nginx MB/s", "mirror MB/s", "mirror %"))
    ok = True
    for streams in (1, args.streams):
        n, m = results["nginx"][streams], results["mirror"][streams]
        ok = ok and m >= 0.8 * n
        print("%-12d %12.0f %12.0f %9.0f%%" % (streams, n, m, 100 * m / n))
    print("goal (mirror >= 80%% of nginx in both): %s" % ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
