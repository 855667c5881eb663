"""The built-in server (server/autoglm_serve) as a real subprocess on loopback, and small HTTP helpers.

    with ServeProcess(model_dir, extra_env={"AUTOGLM_SERVE_API_KEY": "k"}) as srv:
        srv.wait_healthy()
        status, body = post_json(srv.base + "/v1/chat/completions", {...})
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_json(url: str, payload: Any, headers: dict | None = None, timeout: float = 120) -> tuple[int, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, body = request("POST", url, raw, dict({"Content-Type": "application/json"}, **(headers or {})), timeout)
    return status, json.loads(body)


def stream_events(url: str, payload: dict, headers: dict | None = None, timeout: float = 120) -> tuple[int, str, list]:
    """POST with stream=true; return status, content type and the SSE data payloads (JSON, or the string "[DONE]")."""
    status, head, body = request("POST", url, json.dumps(dict(payload, stream=True)).encode(),
                                 dict({"Content-Type": "application/json"}, **(headers or {})), timeout)
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), "not an SSE data line: %r" % block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return status, head.get("content-type", ""), events


class ServeProcess:
    """`python -m autoglm_serve` on a free loopback port; stderr goes to a file the test can read."""

    def __init__(self, model: Path, args: list[str] | None = None, extra_env: dict | None = None,
                 log_path: Path | None = None) -> None:
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / ("autoglm-serve-%d.log" % self.port)
        env = dict(os.environ, PYTHONPATH=str(SERVER_DIR), **(extra_env or {}))
        self.argv = [sys.executable, "-m", "autoglm_serve", "--model", str(model), "--served-model-name", "tiny",
                     "--port", str(self.port), "--threads", "1", *(args or [])]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the life of the process
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def health(self) -> int:
        try:
            return request("GET", self.base + "/health", timeout=5)[0]
        except OSError:
            return 0

    def wait_healthy(self, timeout: float = 180) -> list[int]:
        """Poll /health until 200; return every status seen (0 = not listening yet)."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited with %s:\n%s" % (self.proc.returncode, self.log()))
            seen.append(self.health())
            if seen[-1] == 200:
                return seen
            time.sleep(0.2)
        raise AssertionError("server not healthy after %ss:\n%s" % (timeout, self.log()))

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
