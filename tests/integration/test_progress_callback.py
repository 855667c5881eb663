"""The progress callback in a real ansible-playbook run on localhost: one line per poll of a background job."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.playbook import REPO, run_local_playbook

PLAYBOOK = """
- name: A background job that reports progress, polled until it ends
  hosts: localhost
  gather_facts: false
  vars:
    status: "{{ status_path }}"
  tasks:
    - name: Write a status file the way model_fetch does, a MiB a second
      ansible.builtin.shell: |
        head='{"state": "running", "bytes_done": %d, "bytes_total": 12582912, "files_done": %d, '
        tail='"files_total": 6, "rate_bytes_per_s": 1048576, "eta_s": %d}'
        for i in $(seq 1 12); do
          printf "$head$tail" $((i * 1048576)) $((i / 2)) $((12 - i)) > "{{ status }}.tmp" && mv "{{ status }}.tmp" "{{ status }}"
          sleep 1
        done
      async: 60
      poll: 0
      register: job
      changed_when: true

    - name: Wait for the job
      autoglm.deploy.job_progress:
        jid: "{{ job.ansible_job_id }}"
        kind: status_file
        path: "{{ status }}"
        label: weights
      register: wait
      until: wait.finished
      retries: 30
      delay: 1

    - name: The job's own result comes back once it ends
      ansible.builtin.assert:
        that: [wait.finished, wait.rc == 0, wait is changed]
"""

LINE = re.compile(r"^localhost: weights (running|starting)( \d+\.\d MiB / 12\.0 MiB \(\d+%\), \d/6 files, "
                  r"1\.0 MiB/s, ETA \d+s)?$", re.M)


def write_playbook(tmp_path: Path) -> Path:
    playbook = tmp_path / "progress.yml"
    playbook.write_text(PLAYBOOK)
    return playbook


def test_each_poll_prints_a_progress_line_on_stdout(tmp_path):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="autoglm.deploy.audit_log,autoglm.deploy.progress",
               AUTOGLM_AUDIT_LOG=str(tmp_path / "audit.jsonl"))
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=" + sys.executable,
                           "-e", "status_path=" + str(tmp_path / "status.json"), str(write_playbook(tmp_path))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = LINE.findall(proc.stdout)
    assert len(lines) >= 2, proc.stdout
    # At least one poll caught the job half-way: done below total, a rate, the seconds left.
    assert re.search(r"^localhost: weights running \d+\.0 MiB / 12\.0 MiB \((\d|[1-8]\d)%\), [0-5]/6 files, "
                     r"1\.0 MiB/s, ETA ([1-9]|1[01])s$", proc.stdout, re.M), proc.stdout


def test_with_a_json_stdout_callback_the_lines_go_to_stderr(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "autoglm.deploy.audit_log,autoglm.deploy.progress")
    rc, report, output = run_local_playbook(write_playbook(tmp_path), tmp_path,
                                            extra_vars=("status_path=" + str(tmp_path / "status.json"),))
    assert rc == 0 and report is not None, output  # stdout stayed parseable JSON
    assert LINE.search(output), output
