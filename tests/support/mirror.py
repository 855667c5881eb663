"""The model mirror (mirror/autoglm_mirror) as a real subprocess on 127.0.0.1, for any test that needs a hub.

Fixtures (tests/integration/conftest.py exposes them; copy that file's few lines to use them elsewhere):

    mirror_data     session: a data dir holding the tiny test model (support.testmodel) as
                    TINY_REPO at TINY_COMMIT (branch main, tag v1.0), a second revision DEV_COMMIT
                    (branch dev: the same files plus README.md), and PRIVATE_REPO (needs TOKEN)
    mirror          session: a fault-free server on mirror_data; .url is the HF_ENDPOINT / ModelScope base
    mirror_factory  function: mirror_factory(data=None, **options) starts another server (stopped after
                    the test); options are the serve flags with '_' for '-', e.g.
                    mirror_factory(fail_first=2, fail_status=503), mirror_factory(drop_after=1 << 20,
                    drop_times=1), mirror_factory(rate_limit=200_000), mirror_factory(corrupt_path="*.safetensors",
                    corrupt_times=1), mirror_factory(first_byte_delay=2), mirror_factory(ignore_range=True),
                    mirror_factory(page_size=2). True adds a bare flag; a list repeats the flag.

Without pytest:

    with MirrorProcess(data_dir, fail_first=1) as server:
        requests.get(server.url + "/health")
    ingest(data_dir, "org/name", src_dir, commit="ab" * 20, refs=["main"], tags=["v1.0"])

The server's stderr (startup line, access log) goes to server.log_path; server.log() reads it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIRROR_SRC = REPO / "mirror"
TINY_REPO = "test-org/tiny-qwen2"
TINY_COMMIT = "1" * 40
DEV_COMMIT = "2" * 40
PRIVATE_REPO = "test-org/private-tiny"
PRIVATE_COMMIT = "3" * 40
TOKEN = "hf_test_token_0123456789abcdef"
LISTENING = re.compile(r"listening on (\S+) port (\d+)(?: \((https?)\))?")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_MIRROR_")}
    env["PYTHONPATH"] = str(MIRROR_SRC)
    return env


def ingest(data: str | os.PathLike, repo: str, src: str | os.PathLike, commit: str | None = None,
           refs: list[str] | tuple = (), tags: list[str] | tuple = (), *extra: str) -> dict[str, Any]:
    """Run `python3 -m autoglm_mirror ingest` and return its JSON result (raises with stderr on failure)."""
    args = [sys.executable, "-m", "autoglm_mirror", "ingest", "--data", str(data), "--repo", repo, "--src", str(src)]
    if commit:
        args += ["--commit", commit]
    for ref in refs:
        args += ["--ref", ref]
    for tag in tags:
        args += ["--tag", tag]
    proc = subprocess.run([*args, *extra], capture_output=True, text=True, env=_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError("ingest failed (rc=%d): %s" % (proc.returncode, proc.stderr))
    return json.loads(proc.stdout)


def serve_args(options: dict[str, Any]) -> list[str]:
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


class MirrorProcess:
    """`autoglm_mirror serve` on 127.0.0.1 with a free port; start() waits until /health answers 200."""

    def __init__(self, data: str | os.PathLike, log_dir: str | os.PathLike | None = None, env: dict | None = None,
                 cafile: str | os.PathLike | None = None, **options: Any):
        self.data = Path(data)
        self.options = options
        self.extra_env = env or {}
        self.ssl_context = ssl.create_default_context(cafile=str(cafile)) if cafile else None  # for https servers
        log_dir = Path(log_dir) if log_dir else self.data.parent
        self.log_path = log_dir / ("mirror-%d-%d.log" % (os.getpid(), time.monotonic_ns()))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.url = ""

    def start(self, timeout: float = 20.0) -> MirrorProcess:
        args = [sys.executable, "-m", "autoglm_mirror", "serve", "--data", str(self.data), "--bind", "127.0.0.1",
                "--port", "0", *serve_args(self.options)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=dict(_env(), **self.extra_env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mirror exited with %s:\n%s" % (self.proc.returncode, self.log()))
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(2))
                self.url = "%s://127.0.0.1:%d" % (match.group(3) or "http", self.port)
                if self._healthy():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("mirror did not answer /health within %ss:\n%s" % (timeout, self.log()))

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2, context=self.ssl_context) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> MirrorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def build_mirror_data(data: Path, model_dir: Path) -> Path:
    """The standard data dir of the fixtures (see the module docstring)."""
    ingest(data, TINY_REPO, model_dir, TINY_COMMIT, ["main"], ["v1.0"], "--link")
    dev = data.parent / (data.name + "-dev-src")
    shutil.copytree(model_dir, dev)
    (dev / "README.md").write_text("# tiny-qwen2\n\nThe dev branch: same weights, one more file.\n")
    ingest(data, TINY_REPO, dev, DEV_COMMIT, ["dev"], (), "--link")
    shutil.rmtree(dev)
    ingest(data, PRIVATE_REPO, model_dir, PRIVATE_COMMIT, ["main"], (), "--link")
    return data


def mirror_fixture_server(data: Path, log_dir: Path, **options: Any) -> MirrorProcess:
    """A server with the fixtures' standard auth setup (TOKEN; PRIVATE_REPO protected) plus options."""
    options.setdefault("protected_repo", [PRIVATE_REPO])
    return MirrorProcess(data, log_dir=log_dir, env={"AUTOGLM_MIRROR_TOKEN": TOKEN}, **options).start()
