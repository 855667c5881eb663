"""After converge, idempotence and the drift rerun (side_effect): every drift repaired, only drifted hosts changed."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
REPORT = PROJECT / ".cache" / "molecule-default-drift.json"
AUDIT = PROJECT / ".cache" / "molecule-default-audit.jsonl"
SECRETS = ["lab-key-not-secret"]
WEIGHTS = "/srv/models/tiny"
MODEL = PROJECT / ".cache" / "lab" / "tiny-autoglm"

testinfra_hosts = ["node1", "node2", "node3"]
# side_effect.yml drifts these (node3 and the hub are left alone): the rerun may change nothing else.
DRIFTED = {"node1", "node2", "mirror1"}


def report() -> dict:
    return json.loads(REPORT.read_text())


def test_the_rerun_succeeded_and_changed_only_the_drifted_nodes():
    data = report()
    assert data["rc"] == 0
    changed = {host for host, count in data["stats"].get("changed", {}).items() if count}
    assert changed == DRIFTED, data["changed_tasks"]
    assert not data["stats"].get("failures") and not data["stats"].get("dark")


def test_audit_log_is_json_lines_without_secrets():
    text = AUDIT.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert any(record.get("host") == "node2" and record.get("changed") for record in records)
    summary = records[-1]
    assert summary["event"] == "summary" and summary["failed_hosts"] == []
    assert {host for host, counts in summary["hosts"].items() if counts["changed"]} == DRIFTED
    for secret in SECRETS:
        assert secret not in text


def test_weights_are_the_verified_revision_with_upstream_bytes(host):
    current = host.file(WEIGHTS + "/current")
    assert current.is_symlink
    commit = os.path.basename(current.linked_to)
    manifest = json.loads(host.file(WEIGHTS + "/current/.autoglm/manifest.json").content_string)
    assert manifest["commit"] == commit != "0000000000000000000000000000000000000001"
    for shard in sorted(MODEL.glob("*.safetensors")):
        expected = hashlib.sha256(shard.read_bytes()).hexdigest()
        assert host.file("%s/current/%s" % (WEIGHTS, shard.name)).sha256sum == expected


def test_corrupted_shard_was_quarantined_on_node1_only(host):
    quarantine = host.run("find %s -path '*/.autoglm/quarantine/*' -name '*.safetensors'", WEIGHTS).stdout.split()
    if host.backend.get_hostname() == "node1":
        assert len(quarantine) == 1
    else:
        assert quarantine == []


def test_congestion_control_is_bbr(host):
    assert host.file("/proc/sys/net/ipv4/tcp_congestion_control").content_string.strip() == "bbr"


def test_daemon_json_managed_key_restored(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-opts"]["max-size"] == "10m"


def test_unit_restored_and_every_replica_enabled_and_running(host):
    unit = host.file("/etc/systemd/system/autoglm-inference@.service").content_string
    assert "LimitNOFILE=1024" not in unit
    # node1's two replicas were stopped and disabled (side_effect.yml).
    for port in (["8000", "8001"] if host.backend.get_hostname() == "node1" else ["8000"]):
        service = host.service("autoglm-inference@" + port)
        assert service.is_enabled and service.is_running, port


def test_foreign_dropin_removed_and_the_key_required_again(host):
    for folder in ("/etc/systemd/system/autoglm-inference@8000.service.d", "/etc/systemd/system/autoglm-inference@.service.d"):
        assert host.file(folder).exists is False or host.run("ls %s", folder).stdout.split() == []
    assert "env -u" not in host.run("systemctl show -P ExecStart autoglm-inference@8000").stdout
    fetch = ("import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://127.0.0.1:8000/v1/models', timeout=10)\n"
             "except e.HTTPError as x: print(x.code)")
    assert host.run("python3 -c %s", fetch).stdout.strip() == "401"


def test_venv_has_every_package_back(host):
    cmd = host.run("/opt/autoglm/venvs/autoglm/current/bin/python -c 'import tqdm, transformers, torch'")
    assert cmd.rc == 0, cmd.stderr


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
def test_service_answers(host, path):
    fetch = ("import urllib.request as u; r = u.Request('http://127.0.0.1:8000%s', "
             "headers={'Authorization': 'Bearer lab-key-not-secret'}); print(u.urlopen(r, timeout=10).status)" % path)
    cmd = host.run("python3 -c %s", fetch)
    assert cmd.stdout.strip() == "200", cmd.stderr
