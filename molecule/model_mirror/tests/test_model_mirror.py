"""State on the mirror node after converge and side_effect.yml (a second revision, then a rotated token):
sandboxed unit under its own user, HF answers with the right headers, restarts only when needed."""
from __future__ import annotations

import json
import re

PORT = 8090
SNAP = "/srv/incoming/tiny"
OLD_TOKEN = "molecule-secret-token"
TOKEN = "molecule-rotated-token"  # side_effect.yml rotates it
PIDS = "/var/tmp/autoglm-mirror-pids.json"  # MainPID after converge, the new ingest and the new token

# Runs on the node with its python3 (no curl there): prints status, headers and the body's length and start.
FETCH = r"""
import json, sys, urllib.request, urllib.error
url, headers = sys.argv[1], json.loads(sys.argv[2])
req = urllib.request.Request(url, headers=headers, method=sys.argv[3] if len(sys.argv) > 3 else "GET")
try:
    resp = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as err:
    resp = err
body = resp.read()
print(json.dumps({"status": resp.status, "headers": {k.lower(): v for k, v in resp.headers.items()},
                  "length": len(body), "head": body[:64].hex()}))
"""


def fetch(host, path, headers=None, method="GET"):
    cmd = host.run("python3 -c %s %s %s %s", FETCH, "http://127.0.0.1:%d%s" % (PORT, path),
                   json.dumps(headers or {}), method)
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def test_unit_is_active_and_runs_as_its_own_user(host):
    service = host.service("autoglm-mirror")
    assert service.is_running and service.is_enabled
    pid = host.run("systemctl show -p MainPID --value autoglm-mirror").stdout.strip()
    assert host.run("ps -o user= -p %s", pid).stdout.strip() == "autoglm-mirror"
    assert host.socket("tcp://0.0.0.0:%d" % PORT).is_listening


def test_unit_is_sandboxed(host):
    props = host.run("systemctl show -p ProtectSystem -p NoNewPrivileges -p ProtectHome -p PrivateTmp "
                     "-p ReadOnlyPaths -p RestrictAddressFamilies autoglm-mirror").stdout
    assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props
    assert "ProtectHome=yes" in props and "PrivateTmp=yes" in props
    assert "ReadOnlyPaths=/srv/autoglm-mirror" in props and "AF_INET" in props


def test_token_file_is_root_only(host):
    env = host.file("/etc/autoglm-mirror/mirror.env")
    assert env.user == "root" and env.mode == 0o600
    assert TOKEN in env.content_string and OLD_TOKEN not in env.content_string
    assert TOKEN not in host.file("/etc/systemd/system/autoglm-mirror.service").content_string


def test_health_answers(host):
    result = fetch(host, "/health")
    assert result["status"] == 200


def test_ingested_file_is_served_with_hub_headers(host):
    sha256 = host.run("sha256sum %s/model.safetensors", SNAP).stdout.split()[0]
    result = fetch(host, "/test-org/tiny/resolve/v1.0/model.safetensors", method="HEAD")
    headers = result["headers"]
    assert result["status"] == 200
    assert headers["etag"] == headers["x-linked-etag"] == '"%s"' % sha256
    assert headers["x-repo-commit"] == "1" * 40
    assert headers["content-length"] == headers["x-linked-size"] == str(3 << 20)


def test_range_request_gets_206_and_the_right_bytes(host):
    expected = host.run("dd if=%s/model.safetensors bs=1 skip=1000 count=16 status=none | od -An -tx1 | tr -d ' \\n'",
                        SNAP).stdout.strip()
    result = fetch(host, "/test-org/tiny/resolve/main/model.safetensors", {"Range": "bytes=1000-1015"})
    assert result["status"] == 206 and result["length"] == 16
    assert result["headers"]["content-range"] == "bytes 1000-1015/%d" % (3 << 20)
    assert result["head"] == expected


def test_protected_repo_needs_the_token(host):
    assert fetch(host, "/test-org/private/resolve/main/config.json")["status"] == 401
    old = fetch(host, "/test-org/private/resolve/main/config.json", {"Authorization": "Bearer " + OLD_TOKEN})
    assert old["status"] == 401
    ok = fetch(host, "/test-org/private/resolve/main/config.json", {"Authorization": "Bearer " + TOKEN})
    assert ok["status"] == 200 and ok["length"] > 0
    journal = host.run("journalctl -u autoglm-mirror --no-pager").stdout
    assert TOKEN not in journal and OLD_TOKEN not in journal


def test_service_cannot_write_its_data(host):
    data = host.file("/srv/autoglm-mirror")
    assert data.user == "root" and data.group == "autoglm-mirror" and data.mode == 0o750


def test_new_revision_is_served_beside_the_old_one(host):
    head = fetch(host, "/test-org/tiny/resolve/next/config.json")
    main = fetch(host, "/test-org/tiny/resolve/main/config.json")
    assert head["status"] == main["status"] == 200
    assert bytes.fromhex(head["head"]).startswith(b'{"model_type": "qwen2", "hidden_size": 128}')
    assert bytes.fromhex(main["head"]).startswith(b'{"model_type": "qwen2", "hidden_size": 64}')
    assert head["headers"]["x-repo-commit"] != main["headers"]["x-repo-commit"] == "1" * 40


def test_ingest_does_not_restart_but_a_new_token_does(host):
    pids = json.loads(host.file(PIDS).content_string)
    assert pids["converged"] == pids["ingested"] != "0"
    assert pids["rotated"] not in (pids["ingested"], "0")
    assert pids["rotated"] == host.run("systemctl show -p MainPID --value autoglm-mirror").stdout.strip()


def test_security_exposure_of_the_unit_is_low(host):
    out = host.check_output("systemd-analyze security --no-pager autoglm-mirror")
    score = float(re.search(r"Overall exposure level for autoglm-mirror\.service: ([\d.]+)", out).group(1))
    print("systemd-analyze security exposure: %.1f" % score)
    assert score <= 2.0


def test_store_files_are_copies_never_links_of_their_source(host):
    # test-org/private is listed with link: true, which no longer hard-links: one inode for the source and the
    # mirror's copy let one corruption hit both.
    source = host.file("%s/model.safetensors" % SNAP)
    # No format arguments, so testinfra runs the string as it is: single % for find's own directives.
    found = host.run("find /srv/autoglm-mirror/repos/test-org -path '*/snapshots/*' -name model.safetensors "
                     "-printf '%n %i\\n'").stdout.split("\n")
    placed = [line.split() for line in found if line.strip()]
    assert len(placed) >= 2
    assert all(nlink == "1" and int(inode) != source.inode for nlink, inode in placed), placed
