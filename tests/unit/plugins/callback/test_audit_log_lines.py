"""audit_log writes valid JSON lines, one per task result plus a summary, and never a secret."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
SECRET = "hf_Sup3rS3cretT0ken0123456789"

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    hf_token: %s
  tasks:
    - name: Use the token quietly
      ansible.builtin.command: echo {{ hf_token }}
      changed_when: true
      no_log: true
    - name: Fail quietly with the token in the message
      ansible.builtin.fail:
        msg: "bad token {{ hf_token }}"
      no_log: true
      ignore_errors: true
    - name: Fail loudly without secrets
      ansible.builtin.fail:
        msg: "disk full on /srv"
      ignore_errors: true
    - name: Probe
      ansible.builtin.command: "true"
      changed_when: false
""" % SECRET


def test_audit_lines_are_json_without_secrets(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    audit = tmp_path / "audit" / "log.jsonl"
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), AUTOGLM_AUDIT_LOG=str(audit),
               ANSIBLE_CALLBACKS_ENABLED="autoglm.deploy.audit_log", ANSIBLE_NOCOLOR="1")
    argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable, str(playbook)]
    proc = subprocess.run(argv,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = audit.read_text()
    assert SECRET not in text
    records = [json.loads(line) for line in text.splitlines()]
    tasks = [r for r in records if r["event"] == "task"]
    # no_log tasks: a placeholder, never the (possibly templated) name.
    assert [r["task"] for r in tasks] == ["(no_log task)", "(no_log task)", "Fail loudly without secrets", "Probe"]
    assert [r["status"] for r in tasks] == ["ok", "failed", "failed", "ok"]
    assert [r["changed"] for r in tasks] == [True, False, False, False]
    assert "msg" not in tasks[1] and tasks[2]["msg"] == "disk full on /srv"
    for record in records:
        assert {"time", "user", "controller", "run_id", "playbook"} <= set(record)
        assert record["playbook"] == "play.yml"
    assert all(r["action"] in ("ansible.builtin.command", "ansible.builtin.fail") for r in tasks)
    assert all(isinstance(r["duration_s"], float) for r in tasks)
    summary = records[-1]
    assert summary["event"] == "summary"
    assert summary["hosts"]["localhost"]["changed"] == 1 and summary["changed_total"] == 1
    assert len({r["run_id"] for r in records}) == 1
