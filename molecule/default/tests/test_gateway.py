"""The gateway on mirror1 (roles/gateway: HAProxy from Debian's package) after site.yml and side_effect.yml's rolls:
one OpenAI-compatible endpoint for the four replicas of the three nodes (node1 runs two), keys at the edge, health
checks, JSON access log, metrics, its runtime API root-only, and a sandboxed unit."""
from __future__ import annotations

import json
import shlex

testinfra_hosts = ["mirror1"]
KEY = "lab-gateway-key-not-secret"  # inventories/lab/group_vars/gateway
API = "http://127.0.0.1:8080"


def curl(host, *args) -> str:
    return host.check_output("curl -s -m 120 " + " ".join(shlex.quote(a) for a in args))


def servers(host) -> dict:
    """Each server of the replicas backend: its status as HAProxy's own health check and admin state see it."""
    # check_output quotes its arguments itself.
    rows = host.check_output("echo 'show stat' | python3 -c %s",
                             "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock');"
                             "s.sendall(sys.stdin.buffer.read()); print(b''.join(iter(lambda: s.recv(65536), b'')).decode())")
    lines = rows.splitlines()
    header = lines[0].lstrip("# ").split(",")
    return {row["svname"]: row for row in (dict(zip(header, line.split(","))) for line in lines[1:] if line)
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}


REPLICAS = ["node1:8000", "node1:8001", "node2:8000", "node3:8000"]


def test_every_replica_is_a_server_and_up_after_the_rolls(host):
    # The broken roll left node1 drained; the drift rerun after it gave it back once it passed its health gate.
    state = servers(host)
    assert sorted(state) == REPLICAS
    assert {name: row["status"] for name, row in state.items()} == dict.fromkeys(REPLICAS, "UP")


def test_chat_completion_through_the_gateway_with_a_client_key(host):
    model = json.loads(curl(host, "-H", "Authorization: Bearer " + KEY, API + "/v1/models"))["data"][0]["id"]
    body = json.dumps({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    answer = json.loads(curl(host, "-H", "Authorization: Bearer " + KEY, "-H", "Content-Type: application/json",
                             "-d", body, API + "/v1/chat/completions"))
    assert answer["choices"][0]["message"]["content"] is not None


def test_requests_without_a_known_key_are_refused_at_the_edge(host):
    for headers in ([], ["-H", "Authorization: Bearer wrong"], ["-H", "Authorization: Bearer lab-key-not-secret"]):
        out = curl(host, "-o", "/dev/stderr", "-w", "%{http_code}", *headers, API + "/v1/models")
        assert out == "401", headers


def test_only_the_openai_api_is_passed_to_the_replicas(host):
    # The replicas' /metrics (and anything else outside /v1/) stays behind the gateway.
    out = curl(host, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer " + KEY, API + "/metrics")
    assert out == "404"


def test_access_log_is_one_json_line_per_request_naming_the_key_id_never_the_key(host):
    curl(host, "-o", "/dev/null", "-H", "Authorization: Bearer " + KEY, API + "/v1/models?probe=access-log")
    lines = host.check_output("journalctl -u haproxy -o cat --no-pager -n 400").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith('{"time"')]
    mine = [e for e in entries if e["path"] == "/v1/models" and e["key_id"] == "lab-client"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["replica"] in REPLICAS
    assert any(e["status"] == 401 and e["key_id"] == "-" for e in entries)
    completions = [e for e in entries if e["path"] == "/v1/chat/completions" and e["status"] == 200]
    assert completions and completions[-1]["model"] not in ("", "-")
    assert KEY not in "\n".join(lines) and "lab-key-not-secret" not in "\n".join(lines)


def test_metrics_and_health_on_their_own_port(host):
    assert curl(host, "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8405/health") == "200"
    metrics = curl(host, "http://127.0.0.1:8405/metrics")
    assert 'haproxy_server_status{proxy="replicas",server="node1:8001",state="UP"} 1' in metrics
    assert "haproxy_backend_http_responses_total" in metrics


def test_secrets_and_the_runtime_api_are_not_readable_by_others(host):
    env = host.file("/etc/haproxy/autoglm-gateway.env")
    assert (env.user, env.mode) == ("root", 0o600) and "lab-key-not-secret" in env.content_string
    keys = host.file("/etc/haproxy/autoglm-api-keys.map")
    assert (keys.group, keys.mode) == ("haproxy", 0o640) and KEY not in keys.content_string
    assert host.file("/run/haproxy/admin.sock").mode == 0o600
    assert "lab-key-not-secret" not in host.file("/etc/haproxy/haproxy.cfg").content_string


def test_runs_as_haproxy_in_the_collections_sandbox(host):
    show = host.check_output("systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p FragmentPath haproxy")
    assert "User=haproxy" in show and "NoNewPrivileges=yes" in show and "ProtectSystem=strict" in show
    assert "FragmentPath=/etc/systemd/system/haproxy.service" in show
