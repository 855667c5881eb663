"""Roles refuse bad variables before any task runs, naming the variable (argument specs)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_role(role: str, extra_vars: list[str]) -> subprocess.CompletedProcess:
    playbook = "- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.%s]\n" % role
    path = REPO / ".cache" / ("argspec-%s-%d.yml" % (role, os.getpid()))
    path.parent.mkdir(exist_ok=True)
    path.write_text(playbook)
    try:
        args = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(path)]
        for item in extra_vars:
            args += ["-e", item]
        return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120,
                              env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1"), check=False)
    finally:
        path.unlink()


def test_vram_threshold_given_as_words_is_refused_before_any_task():
    proc = run_role("preflight", ["preflight_vram_per_gpu_gib=lots"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "preflight_vram_per_gpu_gib" in out and "float" in out
    assert "Gather GPU facts" not in out  # refused at validation, before the first task


def test_unknown_check_mode_is_refused():
    proc = run_role("preflight", ['{"preflight_checks": {"vram": "sometimes"}}'])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "sometimes" in out and "vram" in out
    assert "Gather GPU facts" not in out
