"""The service scaffold (roles/service_unit, issue 15 item 4) on localhost, systemctl and journalctl stood in for by
tests/support/fake_systemd.py: the unit is written on the sandbox baseline with a service's overrides; systemd is
reloaded only when the unit changed (the handler, never on a rerun); the service restarts on the parent's reason
only; the health wait stops at the first poll that finds the unit failed, with the unit's journal in the message;
a sandbox directive the baseline does not list is refused; the role refuses to run on its own. Defaults and
argument specs agree key for key in every role."""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from support.fake_systemd import FakeSystemd
from support.playbook import REPO, run_local_playbook

VARS = """
    service_unit_name: demo
    service_unit_description: Demo service
    service_unit_user: nobody
    service_unit_group: nogroup
    service_unit_exec_start: [/usr/bin/python3, -m, http.server, "50%"]
    service_unit_environment: {PYTHONUNBUFFERED: "1"}
    service_unit_service_settings: {RestartSec: 2, TimeoutStopSec: 30}
    service_unit_memory_max: 1G
    service_unit_read_write_paths: [/var/lib/demo]
    service_unit_devices: [char-nvidia-frontend rw, char-nvidia-uvm rw]
    service_unit_sandbox: {ProcSubset: all, MemoryDenyWriteExecute: null}
    service_unit_restart: "{{ demo_restart | default(false) }}"
    service_unit_health_url: "{{ demo_url | default('') }}"
    service_unit_health_timeout: "{{ demo_timeout | default(20) }}"
    service_unit_health_interval: 1
    service_unit_failure_hint: Look at the demo's port.
"""
ROLE = """
- name: Write the unit, start and wait
  ansible.builtin.include_role:
    name: autoglm.deploy.service_unit
  vars:""" + VARS
# As a parent that changes something between the unit and the start (inference_service's drop-ins) includes it:
# the role's handlers are loaded twice, systemd must still be reloaded once.
ROLE_SPLIT = """
- name: Unit, then start
  vars:""" + VARS.replace("\n    ", "\n      ") + """
  block:
    - name: Write the unit
      ansible.builtin.include_role:
        name: autoglm.deploy.service_unit
        tasks_from: unit
    - name: Something between them that needs a reload too
      ansible.builtin.debug:
        msg: drop-ins
      changed_when: demo_dropins | default(false)
      notify: service_unit daemon-reload
    - name: Start and wait
      ansible.builtin.include_role:
        name: autoglm.deploy.service_unit
        tasks_from: start
"""
# Another service's unit written just before this service's start (a host running two services).
ROLE_OTHER = """
- name: Another service's unit
  ansible.builtin.include_role:
    name: autoglm.deploy.service_unit
    tasks_from: unit
  vars:""" + VARS.replace("service_unit_name: demo", "service_unit_name: other") + """
- name: This service's start
  ansible.builtin.include_role:
    name: autoglm.deploy.service_unit
    tasks_from: start
  vars:
    service_unit_name: demo
"""


@pytest.fixture
def scaffold(request, tmp_path, monkeypatch):
    systemd = FakeSystemd(tmp_path)
    monkeypatch.setenv("PATH", "%s:%s" % (systemd.bin, os.environ["PATH"]))
    (tmp_path / "roles" / "demo" / "tasks").mkdir(parents=True)
    (tmp_path / "roles" / "demo" / "tasks" / "main.yml").write_text(ROLE_SPLIT if getattr(request, "param", "") == "split" else ROLE)
    (tmp_path / "roles" / "demo" / "tasks" / "other.yml").write_text(ROLE_OTHER)
    unit = tmp_path / "demo.service"
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [demo]\n")
    (tmp_path / "other.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                                        "    - {name: Other, ansible.builtin.include_role: {name: demo, tasks_from: other}}\n")

    def run(play=playbook, **extra):
        variables = dict({"_service_unit_dir": str(tmp_path)}, **extra)
        rc, _report, output = run_local_playbook(play, tmp_path, extra_vars=(json.dumps(variables),))
        return rc, output

    return systemd, unit, run


def test_unit_is_written_on_the_baseline_with_the_services_overrides(scaffold):
    _systemd, unit, run = scaffold
    rc, output = run()
    assert rc == 0, output
    text = unit.read_text()
    lines = text.splitlines()
    assert "ExecStart=/usr/bin/python3 -m http.server '50%%'" in lines
    assert "Environment=PYTHONUNBUFFERED=1" in lines and "MemoryMax=1G" in lines
    assert lines.index("Restart=on-failure") < lines.index("RestartSec=2") < lines.index("TimeoutStopSec=30")
    assert {"PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw",
            "DeviceAllow=char-nvidia-uvm rw", "ReadWritePaths=/var/lib/demo", "ProcSubset=all"} <= set(lines)
    assert "PrivateDevices=yes" not in lines and "MemoryDenyWriteExecute" not in text  # null: left out
    assert "CapabilityBoundingSet=" in lines and "ProtectSystem=strict" in lines and "IPAddressDeny" not in text


@pytest.mark.parametrize("scaffold", ["main", "split"], indirect=True)
def test_systemd_reloads_only_when_the_unit_changed_and_restarts_only_for_a_reason(scaffold, request):
    systemd, unit, run = scaffold
    rc, output = run()
    assert rc == 0, output
    first = systemd.calls()
    assert first.count(["daemon-reload"]) == 1 and ["start", "demo"] in first and ["restart", "demo"] not in first
    rc, output = run()
    assert rc == 0, output
    again = systemd.calls()
    assert ["daemon-reload"] not in again and not any(c[0] in ("start", "restart") for c in again), again
    rc, output = run(demo_restart=True)
    assert rc == 0, output
    reason = systemd.calls()
    assert ["restart", "demo"] in reason and ["daemon-reload"] not in reason
    unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSec=9"))  # changed behind the role's back
    rc, output = run()
    assert rc == 0, output
    changed = systemd.calls()
    assert changed.count(["daemon-reload"]) == 1 and ["restart", "demo"] in changed
    assert changed.index(["daemon-reload"]) < changed.index(["restart", "demo"])
    if "split" in request.node.name:  # a drop-in the parent removed notifies the same handler
        rc, output = run(demo_dropins=True)
        assert rc == 0, output
        assert systemd.calls().count(["daemon-reload"]) == 1


def test_another_services_new_unit_does_not_restart_this_one(scaffold, tmp_path):
    systemd, _unit, run = scaffold
    rc, output = run()
    assert rc == 0, output
    systemd.calls()
    rc, output = run(play=tmp_path / "other.yml")
    assert rc == 0 and (tmp_path / "other.service").exists(), output
    calls = systemd.calls()
    assert ["daemon-reload"] in calls and ["restart", "demo"] not in calls, calls


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_health_wait_passes_on_200_from_a_running_unit(scaffold):
    _systemd, _unit, run = scaffold
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc, output = run(demo_url="http://127.0.0.1:%d/health" % server.server_address[1])
    finally:
        server.shutdown()
    assert rc == 0, output


@pytest.mark.parametrize("on_start", [
    {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code", "NRestarts": "0"},
    {"ActiveState": "failed", "SubState": "failed", "Result": "start-limit-hit", "NRestarts": "5"},
    {"ActiveState": "activating", "SubState": "auto-restart", "Result": "exit-code", "NRestarts": "3"},
], ids=["failed", "start-limit", "crash-loop"])
def test_health_wait_stops_at_once_when_the_unit_fails_and_shows_its_journal(scaffold, on_start):
    systemd, _unit, run = scaffold
    systemd.set(on_start=on_start)
    started = time.monotonic()
    rc, output = run(demo_url="http://127.0.0.1:9/health", demo_timeout=120)
    assert rc != 0, output
    assert time.monotonic() - started < 60, "the wait polled on after the unit failed"
    assert "failed while starting, so the wait stopped early" in output
    assert "demo[1]: journal line 3" in output and "Look at the demo's port." in output


def test_health_wait_gives_up_after_its_timeout_on_no_answer(scaffold):
    _systemd, _unit, run = scaffold
    rc, output = run(demo_url="http://127.0.0.1:9/health", demo_timeout=2)
    assert rc != 0 and "did not come up within 2 s" in output and "journal line 1" in output, output


def test_unknown_sandbox_directive_is_refused(scaffold):
    _systemd, unit, run = scaffold
    rc, output = run(service_unit_sandbox={"ProtectSytem": "strict"})
    assert rc != 0 and "ProtectSytem" in output and not unit.exists(), output


def test_the_role_refuses_to_run_on_its_own(tmp_path):
    playbook = tmp_path / "direct.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.service_unit]\n")
    rc, _report, output = run_local_playbook(playbook, tmp_path)
    assert rc != 0 and "internal" in output, output


@pytest.mark.parametrize("role", sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta").is_dir()))
def test_defaults_and_argument_specs_agree_key_for_key(role):
    root = REPO / "roles" / role
    defaults = yaml.safe_load((root / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((root / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = {}
    for entry in specs.values():
        options.update(entry.get("options") or {})
    assert sorted(set(defaults) ^ set(options)) == []
    # A default the spec writes down is the one defaults/main.yml holds (computed ones are left out of the spec).
    assert {k: v["default"] for k, v in options.items() if "default" in v} == {
        k: defaults[k] for k, v in options.items() if "default" in v}


def test_the_mirror_writes_its_unit_through_the_scaffold():
    tasks = yaml.safe_load((REPO / "roles" / "model_mirror" / "tasks" / "main.yml").read_text())
    names = [t.get("ansible.builtin.include_role", {}).get("name") for t in tasks]
    assert names.count("autoglm.deploy.service_unit") == 2
    assert not (REPO / "roles" / "model_mirror" / "templates" / "autoglm-mirror.service.j2").exists()
    assert not Path(REPO / "roles" / "model_mirror" / "handlers").exists()
