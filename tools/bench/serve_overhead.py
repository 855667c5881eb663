#!/usr/bin/env python3
"""Benchmark: the built-in server (server/autoglm_serve) vs calling `generate` directly, same model, same prompt.

    .venv/bin/python tools/bench/serve_overhead.py [--model DIR] [--max-tokens 64] [--repeat 20]
        [--threads 1] [--concurrency 1 4 8] [--rounds 3] [--trials 3] [--server-arg=--max-batch=1 ...]

Uses the tiny test model (tools/testmodel/build_test_model.py; built into a temporary folder unless
--model is given), greedy decoding, one prompt rendered with the model's chat template.

* Overhead at 1 request: median (and fastest) latency of `--repeat` chat completions over HTTP on loopback (JSON,
  queue, per-token decode and stop checks included) against the median of the same number of direct
  `model.generate` calls with the same token ids and the same torch thread count. Between them, the
  server's Engine.generate called in this process (per-token decoding, no HTTP, no queue) shows which
  part of the overhead is the engine and which is HTTP.
* Throughput at N concurrent requests: N client threads each send `--rounds` requests; requests/s and
  generated tokens/s, best of --trials. Beside it, direct `generate`: the same N x rounds requests one after another (what
  a server without batching would do, minus HTTP) and as batches of N (the ideal the server's batching
  approaches when all N requests arrive at once).

The ways never run at once, so they do not compete for the CPU; single requests are interleaved so that
load from elsewhere hits all alike. Timings are a report, not a test. Nothing is left running.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "server"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
from autoglm_serve.engine import Engine, Job, Sampling
from support.serve import ServeProcess, post_json  # one home for starting the server
from support.testmodel import model_or_tiny

PROMPT = "Open the settings app, turn on airplane mode, then go back to the home screen."


class Direct:
    """The model in this process, called the way the engine calls it, without the server around it."""

    def __init__(self, model: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True,
                                                          dtype=torch.float32).eval()
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                  add_generation_prompt=True)
        self.prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def generate(self, max_tokens: int, batch: int = 1) -> int:
        """Generate for `batch` copies of the prompt; return the new tokens of the first."""
        torch = self.torch
        input_ids = torch.tensor([self.prompt_ids] * batch, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None,
                                      top_k=None, pad_token_id=self.pad)
        return out.shape[1] - input_ids.shape[1]


def chat(base: str, max_tokens: int) -> int:
    """One non-streaming chat completion; returns the completion tokens."""
    status, body = post_json(base + "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
        "max_tokens": max_tokens})
    if status != 200:
        raise RuntimeError("chat completion failed: %s %s" % (status, json.dumps(body)))
    return int(body["usage"]["completion_tokens"])


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def concurrent(fn: Any, clients: int, rounds: int) -> tuple[float, int]:
    """Run fn() `rounds` times in each of `clients` threads at once; wall seconds and the sum of results."""
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _unused in range(rounds):
            value = fn()
            with lock:
                results.append(value)

    threads = [threading.Thread(target=client) for _unused in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if len(results) != clients * rounds:
        raise RuntimeError("%d of %d requests finished" % (len(results), clients * rounds))
    return elapsed, sum(results)


def engine_call(engine: Engine, prompt_ids: list[int], max_tokens: int) -> int:
    """The server's own generation step, in this process: per-token decoding, no HTTP, no queue."""
    job = Job(prompt_ids=list(prompt_ids), sampling=Sampling(max_tokens=max_tokens, temperature=0), stream=False)
    return engine.generate(job).completion_tokens


def measure(model: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every measurement with the server up but idle between its requests; the three ways are interleaved
    request by request, so load from elsewhere on the machine hits them alike."""
    with ServeProcess(model, args=["--threads", str(args.threads), "--log-level", "warning", *args.server_arg],
                      log_path=work / "serve.log") as srv:
        srv.wait_healthy()
        direct = Direct(model, args.threads)
        engine = Engine(str(model), device="cpu", dtype="float32")
        engine.load()
        ways = {"generate": lambda: direct.generate(args.max_tokens),
                "engine": lambda: engine_call(engine, direct.prompt_ids, args.max_tokens),
                "server": lambda: chat(srv.base, args.max_tokens)}
        for _unused in range(3):  # warm-up: first calls allocate and pick kernels
            for call in ways.values():
                call()
        latencies: dict[str, list[float]] = {name: [] for name in ways}
        tokens: dict[str, int] = {}
        for _unused in range(args.repeat):
            for name, call in ways.items():
                latencies[name].append(timed(call)[0])
        for name, call in ways.items():
            tokens[name] = call()
        out: dict[str, Any] = {"latency": {name: statistics.median(v) for name, v in latencies.items()},
                               "best": {name: min(v) for name, v in latencies.items()},
                               "tokens": tokens, "serial": {}, "batched": {}, "server": {}}
        for n in args.concurrency:
            total = n * args.rounds
            runs = {
                "serial": lambda n=n: timed(lambda: sum(direct.generate(args.max_tokens) for _unused in range(n * args.rounds))),
                "batched": lambda n=n: timed(lambda: sum(direct.generate(args.max_tokens, n) * n for _unused in range(args.rounds))),
                "server": lambda n=n: concurrent(ways["server"], n, args.rounds),
            }
            for kind in runs:
                out[kind][n] = (0.0, 0.0)
            for _unused in range(args.trials):  # best of, interleaved: a burst of load elsewhere spoils one run, not the row
                for kind, run in runs.items():
                    seconds, made = run()
                    out[kind][n] = max(out[kind][n], (total / seconds, made / seconds))
    return out


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    print("tiny test model on CPU, %d torch thread(s), %d CPU cores, greedy, %d new tokens per request"
          % (args.threads, os.cpu_count() or 0, r["tokens"]["generate"]))
    print()
    print("%-28s %12s %12s %12s %10s" % ("1 request (%d, interleaved)" % args.repeat, "generate ms", "engine ms",
                                         "server ms", "overhead"))
    overhead = {}
    for row in ("latency", "best"):
        lat = r[row]
        overhead[row] = 100 * (lat["server"] - lat["generate"]) / lat["generate"]
        print("%-28s %12.1f %12.1f %12.1f %9.1f%%" % ("median" if row == "latency" else "fastest", 1000 * lat["generate"],
                                                      1000 * lat["engine"], 1000 * lat["server"], overhead[row]))
    print()
    print("%-12s %20s %20s %20s" % ("concurrent", "generate serial", "generate batched", "server"))
    print("%-12s %20s %20s %20s" % ("requests", "req/s  tok/s", "req/s  tok/s", "req/s  tok/s"))
    for n in args.concurrency:
        cells = [r["serial"][n], r["batched"][n], r["server"][n]]
        print("%-12d" % n + "".join(" %12.1f %7.0f" % cell for cell in cells))
    print()
    print("goal (median overhead < 10%% at 1 request): %s" % ("met" if overhead["latency"] < 10 else "NOT met"))
    if len(set(r["tokens"].values())) > 1:
        print("note: the ways generated different token counts: %s" % r["tokens"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--model", type=Path, help="model directory (default: build the tiny test model)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20, help="requests timed for the 1-request latency")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, on both sides")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client in the throughput runs")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument, repeatable; e.g. --server-arg=--max-batch=1 for no batching")
    parser.add_argument("--trials", type=int, default=3, help="throughput runs per row; the best is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        model = model_or_tiny(args.model, work)
        results = measure(model, args, work)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
