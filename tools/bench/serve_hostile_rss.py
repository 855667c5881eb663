#!/usr/bin/env python3
"""Benchmark: the built-in server's memory while it refuses prompts longer than its context.

    .venv/bin/python tools/bench/serve_hostile_rss.py [--model DIR] [--sizes 64K 1M 8M] [--server-arg=--max-body-bytes=33554432]

Starts `python -m autoglm_serve` on the tiny test model (built into a temporary folder unless --model is given),
warms it with one chat completion, then sends one chat completion per size whose single message is that many
bytes of text ("word word ..."), far over the context. For each it prints the answer, the seconds to it, the
server's idle RSS and its peak RSS while refusing (VmHWM, reset before each request through
/proc/PID/clear_refs). The goal: peak within 1.5x idle. By default the larger sizes are over the body limit
(413, unread); --server-arg=--max-body-bytes=33554432 lets them in to show the prompt counting (400).
A report, not a test; nothing is left running.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from support.serve import RawConnection, ServeProcess, chat_request, peak_rss_reset, post_json, rss_kib
from support.testmodel import model_or_tiny

UNITS = {"K": 1 << 10, "M": 1 << 20}


def size_of(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1].upper()] if text[-1].upper() in UNITS else int(text)


def refuse(base: str, text_bytes: int) -> tuple[int, str, float]:
    """Send one over-long prompt while reading the answer (the server may answer before the body is all sent)."""
    body = json.dumps({"model": "tiny", "temperature": 0, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "word " * (text_bytes // 5)}]}).encode()
    conn = RawConnection(base, timeout=300)
    data = chat_request(body)

    def sender() -> None:
        with contextlib.suppress(OSError):  # refused early: the server stops reading, the rest may not go
            conn.send(data)

    started = time.perf_counter()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        status, _unused, raw = conn.response()
        code = json.loads(raw)["error"]["code"] if raw else ""
    finally:
        conn.close()
    return status, code, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--model", type=Path, help="model directory (default: build the tiny test model)")
    parser.add_argument("--sizes", nargs="+", default=["64K", "1M", "8M"], help="prompt sizes in bytes (K, M suffixes)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server argument, repeatable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-rss-") as tmp:
        work = Path(tmp)
        model = model_or_tiny(args.model, work)
        with ServeProcess(model, args=["--log-level", "warning", *args.server_arg], log_path=work / "serve.log") as srv:
            srv.wait_healthy()
            status, _unused = post_json(srv.base + "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Open the settings app."}], "temperature": 0, "max_tokens": 8})
            if status != 200:
                raise RuntimeError("warm-up chat completion failed: %s" % status)
            time.sleep(0.5)
            idle = rss_kib(srv.proc.pid)["VmRSS"] / 1024
            print("built-in server, tiny test model, server args: %s" % (" ".join(args.server_arg) or "(defaults)"))
            print("idle RSS %.0f MiB; goal: peak while refusing within 1.5x idle (%.0f MiB)" % (idle, 1.5 * idle))
            print()
            print("%-10s %-34s %9s %14s %10s" % ("prompt", "answer", "seconds", "peak RSS MiB", "peak/idle"))
            worst = 0.0
            for size in args.sizes:
                if not peak_rss_reset(srv.proc.pid):
                    raise RuntimeError("cannot reset the peak RSS (/proc/PID/clear_refs) on this kernel")
                status, code, seconds = refuse(srv.base, size_of(size))
                peak = rss_kib(srv.proc.pid)["VmHWM"] / 1024
                worst = max(worst, peak / idle)
                print("%-10s %-34s %9.2f %14.0f %9.2fx" % (size, "%d %s" % (status, code), seconds, peak, peak / idle))
            print()
            print("goal (peak within 1.5x idle): %s" % ("met" if worst <= 1.5 else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
