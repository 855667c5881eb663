"""The built-in server (server/autoglm_serve) as a real subprocess on loopback, and small HTTP helpers.

    with ServeProcess(model_dir, extra_env={"AUTOGLM_SERVE_API_KEY": "k"}) as srv:
        srv.wait_healthy()
        status, body = post_json(srv.base + "/v1/chat/completions", {...})

tiny_glm4v(tmp_path_factory) gives the tiny GLM-4.1V (support.testmodel.glm4v_model) for the vision tests,
with the lab screenshot, instruction and the action its greedy answer must be.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support.testmodel import glm4v_model, load_builder

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "server"


@dataclass(frozen=True)
class VisionModel:
    path: Path
    screenshot: bytes  # a PNG
    instruction: str
    action: str  # the greedy answer to the screenshot, then the instruction
    no_screen_action: str  # the greedy answer to the instruction alone


def tiny_glm4v(tmp_path_factory) -> VisionModel:
    """The tiny GLM-4.1V (support.testmodel.glm4v_model: built once per session) and what it must answer."""
    builder = load_builder()
    return VisionModel(glm4v_model(tmp_path_factory), builder.lab_screenshot_png(), builder.LAB_INSTRUCTION,
                       builder.LAB_ACTION, builder.NO_SCREEN_ACTION)


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


def metric(server: Any, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent), e.g. metric(srv, "autoglm_serve_batches_total")."""
    text = request("GET", server.base + "/metrics")[2].decode()
    want = "{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items())) if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    return 0.0


def post_json(url: str, payload: Any, headers: dict | None = None, timeout: float = 120) -> tuple[int, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _unused, body = request("POST", url, raw, dict({"Content-Type": "application/json"}, **(headers or {})), timeout)
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


class RawConnection:
    """One HTTP/1.1 connection written byte by byte, for what http.client will not send (bad framing, pipelining,
    a slow trickle) and to see whether the server keeps the connection open afterwards."""

    def __init__(self, base: str, timeout: float = 20) -> None:
        parts = urlsplit(base)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        """The next response: status, headers (lower-case names), body (by Content-Length; none for head_only)."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionError("the server closed the connection before a response: %r" % self._buffer)
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _unused, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only or status == 100 else int(headers.get("content-length", 0))
        while len(self._buffer) < length:
            if not self._fill():
                raise ConnectionError("the body ended early")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        """True when the server has closed its side (EOF or reset) and sent nothing more."""
        try:
            return not self._buffer and not self._fill()
        except ConnectionResetError:
            return True

    def reset(self) -> None:
        """Close with a TCP reset, as a client that crashed or was killed."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def chat_request(payload: Any, headers: dict | None = None, path: str = "/v1/chat/completions",
                 method: str = "POST") -> bytes:
    """The bytes of one request with a JSON (or given raw) body and a right Content-Length."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    head = "%s %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (method, path, len(body))
    head += "".join("%s: %s\r\n" % item for item in (headers or {}).items())
    return head.encode() + b"\r\n" + body


def peak_rss_reset(pid: int) -> bool:
    """Reset a process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/%d/clear_refs" % pid).write_text("5")
        return True
    except OSError:
        return False


def rss_kib(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        name, _unused, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields
