"""Run a playbook on localhost the way the collection's users do: this repo's ansible.cfg, the json callback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_local_playbook(playbook: Path, tmp_path: Path, extra_vars: tuple = (), check: bool = False,
                       timeout: int = 300) -> tuple:
    """(returncode, the json callback's report or None, raw output). The audit log goes under tmp_path."""
    command = ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable]
    for item in extra_vars:
        command += ["-e", item]
    command.append(str(playbook))
    if check:
        command.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", AUTOGLM_AUDIT_LOG=str(tmp_path / "audit.jsonl"))
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    return proc.returncode, report, proc.stdout + proc.stderr
