"""gateway_server against a real HAProxy (Debian's 2.6, tools/lab/lib.sh ensure_haproxy_binary) on loopback: two
backend HTTP servers behind it, health-checked as the gateway role configures it, and the module draining,
readying and maintaining one of them over the admin socket - each test asserts what HAProxy and the clients see.

The module runs in a real subprocess as Ansible runs it (run_module).
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLOW_SECONDS = 2.0


@pytest.fixture(scope="session")
def haproxy_bin() -> Path:
    subprocess.run(["bash", "-c", "source tools/lab/lib.sh && ensure_haproxy_binary"], cwd=REPO, check=True)
    out = subprocess.run(["bash", "-c", 'source tools/lab/lib.sh && printf %s "$AUTOGLM_HAPROXY_TOOLS"'],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    binary = Path(out) / "haproxy"
    assert binary.is_file(), "no haproxy at %s: run tools/test.sh (ensure_haproxy_binary makes it)" % binary
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Backend:
    """One replica: /health answers 200, /hit answers its name, /slow answers after SLOW_SECONDS, /fail 500."""

    def __init__(self, name: str):
        self.name = name
        self.hits = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # the name http.server calls
                if self.path == "/slow":
                    time.sleep(SLOW_SECONDS)
                if self.path == "/fail":
                    self.send_error(500)
                    return
                if self.path in ("/hit", "/slow"):
                    with backend.lock:
                        backend.hits += 1
                elif self.path != "/health":
                    self.send_error(404)
                    return
                body = backend.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()


def admin(sock: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def stat(sock: Path, server: str) -> dict:
    """HAProxy's `show stat` row of replicas/SERVER."""
    lines = admin(sock, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    return next(dict(zip(header, line.split(","))) for line in lines[1:] if line.split(",")[:2] == ["replicas", server])


def servers_state(sock: Path) -> dict:
    """srv_name -> its `show servers state` row, as HAProxy keeps it."""
    lines = admin(sock, "show servers state replicas").splitlines()
    header = next(line[2:].split() for line in lines if line.startswith("# be_id"))
    rows = [dict(zip(header, line.split())) for line in lines if line and not line.startswith("#") and " " in line]
    return {row["srv_name"]: row for row in rows}


class Gateway:
    def __init__(self, binary: Path, tmp_path: Path):
        self.backends = {"node1": Backend("node1"), "node2": Backend("node2")}
        self.sock = tmp_path / "admin.sock"
        self.port = free_port()
        self.log = tmp_path / "haproxy.log"
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text("\n".join([
            "global",
            "    stats socket %s mode 600 level admin" % self.sock,
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 15s",
            "    timeout server 15s",
            "    timeout check 2s",
            "frontend gateway",
            "    bind 127.0.0.1:%d" % self.port,
            "    default_backend replicas",
            "backend replicas",
            "    balance leastconn",
            "    option httpchk",
            "    http-check send meth GET uri /health",
            "    http-check expect status 200",
            "    default-server inter 500ms fall 2 rise 2 check",
            *("    server %s 127.0.0.1:%d" % (name, b.port) for name, b in self.backends.items()),
            "",
        ]))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([str(binary), "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        self.wait_status("node1", "UP")
        self.wait_status("node2", "UP")

    def wait_status(self, server: str, status: str, timeout: float = 15):
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "haproxy exited: %s" % self.log.read_text()
            if self.sock.exists():
                try:
                    seen = stat(self.sock, server)["status"]
                except (OSError, StopIteration):
                    seen = None
                if seen == status:
                    return
            time.sleep(0.1)
        raise AssertionError("replicas/%s never %s (last %s): %s" % (server, status, seen, self.log.read_text()))

    def get(self, path: str = "/hit") -> tuple:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def hits_after(self, requests: int) -> dict:
        """How many of REQUESTS sent through the frontend reached each backend server."""
        before = {name: b.hits for name, b in self.backends.items()}
        for _index in range(requests):
            status, _body = self.get()
            assert status == 200
        return {name: b.hits - before[name] for name, b in self.backends.items()}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for backend in self.backends.values():
            backend.stop()


@pytest.fixture
def gateway(haproxy_bin, tmp_path):
    gw = Gateway(haproxy_bin, tmp_path)
    yield gw
    gw.stop()


def server(run_module, gw: Gateway, name: str, state: str, check: bool = False, diff: bool = False, **args):
    return run_module("gateway_server", dict(socket=str(gw.sock), server=name, state=state, **args),
                      check_mode=check, diff=diff, timeout=120)


def test_drain_takes_the_server_out_of_rotation_and_is_idempotent(run_module, gateway):
    assert gateway.hits_after(10)["node1"] > 0  # both serve before
    first = server(run_module, gateway, "node1", "drain", timeout=10)
    assert first["_rc"] == 0, first.get("msg")
    assert first["changed"] is True and first["found"] is True
    assert first["admin_state"] == "drain" and first["status"] == "DRAIN" and first["sessions"] == 0
    assert int(servers_state(gateway.sock)["node1"]["srv_admin_state"]) & 0x08  # drain forced, as HAProxy keeps it

    again = server(run_module, gateway, "node1", "drain", timeout=10)
    assert again["_rc"] == 0, again.get("msg")
    assert again["changed"] is False and again["admin_state"] == "drain"

    assert gateway.hits_after(10) == {"node1": 0, "node2": 10}


def test_drain_waits_for_the_request_in_flight(run_module, gateway):
    forced = server(run_module, gateway, "node2", "maint", timeout=10)
    assert forced["_rc"] == 0 and forced["changed"] is True and forced["admin_state"] == "maint", forced
    slow: dict = {}
    client = threading.Thread(target=lambda: slow.update(answer=gateway.get("/slow")))
    client.start()
    deadline = time.monotonic() + 5
    while int(stat(gateway.sock, "node1")["scur"] or 0) == 0:
        assert time.monotonic() < deadline, "the slow request never reached node1"
        time.sleep(0.05)
    started = time.monotonic()

    drained = server(run_module, gateway, "node1", "drain", timeout=30)
    client.join(15)
    assert drained["_rc"] == 0, drained.get("msg")
    assert drained["changed"] is True and drained["admin_state"] == "drain" and drained["sessions"] == 0
    assert drained["waited"] >= 1.0, drained
    assert time.monotonic() - started >= 1.0
    assert slow["answer"] == (200, "node1")  # the request in flight finished, not cut
    assert int(stat(gateway.sock, "node1")["scur"] or 0) == 0


def test_check_mode_reports_the_change_and_sets_nothing(run_module, gateway):
    before = servers_state(gateway.sock)["node1"]["srv_admin_state"]
    checked = server(run_module, gateway, "node1", "drain", check=True, diff=True, timeout=10)
    assert checked["_rc"] == 0, checked.get("msg")
    assert checked["changed"] is True and checked["admin_state"] == "drain"
    assert checked["diff"] == {"before": "replicas/node1: ready\n", "after": "replicas/node1: drain\n"}
    assert servers_state(gateway.sock)["node1"]["srv_admin_state"] == before == "0"
    assert stat(gateway.sock, "node1")["status"] == "UP"
    assert gateway.hits_after(10)["node1"] > 0


def test_ready_after_drain_waits_for_up_and_gives_traffic_back(run_module, gateway):
    drained = server(run_module, gateway, "node1", "drain", timeout=10)
    assert drained["_rc"] == 0 and drained["changed"] is True, drained
    assert gateway.hits_after(6)["node1"] == 0
    ready = server(run_module, gateway, "node1", "ready", diff=True, timeout=20)
    assert ready["_rc"] == 0, ready.get("msg")
    assert ready["changed"] is True and ready["admin_state"] == "ready" and ready["status"].startswith("UP")
    assert ready["diff"] == {"before": "replicas/node1: drain\n", "after": "replicas/node1: ready\n"}
    assert servers_state(gateway.sock)["node1"]["srv_admin_state"] == "0"
    assert gateway.hits_after(10)["node1"] > 0

    maint = server(run_module, gateway, "node1", "maint", timeout=10)
    assert maint["_rc"] == 0 and maint["changed"] is True and maint["status"] == "MAINT", maint
    back = server(run_module, gateway, "node1", "ready", timeout=20)
    # out of maintenance HAProxy checks it again before it is up: the module waited for that
    assert back["_rc"] == 0 and back["changed"] is True and back["status"].startswith("UP"), back
    assert gateway.hits_after(10)["node1"] > 0


def test_ready_fails_after_the_timeout_when_the_health_check_finds_it_down(run_module, gateway):
    drained = server(run_module, gateway, "node1", "drain", timeout=10)
    assert drained["_rc"] == 0 and drained["changed"] is True, drained
    gateway.backends["node1"].stop()
    gateway.wait_status("node1", "DOWN")
    started = time.monotonic()
    failed = server(run_module, gateway, "node1", "ready", timeout=3)
    assert failed["_rc"] != 0 and failed.get("failed") is True, failed
    assert 3.0 <= time.monotonic() - started < 15 and failed["waited"] >= 3.0
    assert "health check" in failed["msg"] and "replicas/node1" in failed["msg"] and "DOWN" in failed["msg"]
    assert failed["found"] is True and failed["admin_state"] == "ready"
    assert gateway.hits_after(5) == {"node1": 0, "node2": 5}


def test_unknown_server_changes_nothing_and_warns(run_module, gateway):
    def admin_states() -> dict:
        return {name: row["srv_admin_state"] for name, row in servers_state(gateway.sock).items()}

    before = admin_states()
    result = server(run_module, gateway, "node9", "drain", timeout=5)
    assert result["_rc"] == 0, result.get("msg")
    assert result["changed"] is False and result["found"] is False
    assert "has no server node9" in json.dumps(result.get("warnings")), result
    assert admin_states() == before == {"node1": "0", "node2": "0"}


def test_missing_socket_fails_saying_the_admin_socket_cannot_be_reached(run_module, tmp_path):
    missing = tmp_path / "no-such.sock"
    result = run_module("gateway_server", dict(socket=str(missing), server="node1", state="drain", timeout=3))
    assert result["_rc"] != 0 and result.get("failed") is True, result
    assert "cannot reach the gateway's admin socket" in result["msg"] and str(missing) in result["msg"]


def test_counts_the_responses_and_errors_it_passed_on_for_the_server(run_module, gateway):
    # The canary's error rate (roles/inference_service, tasks/canary.yml) is the difference of two reads.
    server(run_module, gateway, "node2", "maint", timeout=10)  # every request below goes to node1
    before = server(run_module, gateway, "node1", "ready", timeout=10)
    assert before["_rc"] == 0 and before["changed"] is False, before
    for path in ["/hit"] * 7 + ["/fail"] * 3 + ["/nothing-here"]:
        gateway.get(path)
    after = server(run_module, gateway, "node1", "ready", check=True, timeout=10)
    assert after["_rc"] == 0, after.get("msg")
    assert after["responses"] - before["responses"] == 11  # the 404 is a response, not an error
    assert after["errors"] - before["errors"] == 3
    assert int(stat(gateway.sock, "node1")["hrsp_5xx"]) == after["errors"]
