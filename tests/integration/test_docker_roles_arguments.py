"""docker_engine and registry_cache refuse bad variables before any task runs (argument specs)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_role(role: str, extra_vars: str) -> str:
    playbook = "- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.%s]\n" % role
    path = REPO / ".cache" / ("argspec-docker-%s-%d.yml" % (role, os.getpid()))
    path.parent.mkdir(exist_ok=True)
    path.write_text(playbook)
    try:
        proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(path), "-e", extra_vars],
                              capture_output=True, text=True, cwd=REPO, timeout=120,
                              env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1"), check=False)
    finally:
        path.unlink()
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(("role", "extra_vars", "words", "first_task"), [
    ("docker_engine", '{"docker_engine_nvidia_runtime": "maybe"}', ["docker_engine_nvidia_runtime", "maybe"], "Refresh the apt package lists"),
    ("docker_engine", '{"docker_engine_source": "snap"}', ["docker_engine_source", "snap"], "Refresh the apt package lists"),
    ("docker_engine", '{"docker_engine_registry_mirrors": {"a": 1}}', ["docker_engine_registry_mirrors", "list"], "Refresh the apt package lists"),
    ("registry_cache", '{"registry_cache_port": "five thousand"}', ["registry_cache_port", "int"], "Refresh the apt package lists"),
])
def test_bad_variables_are_refused_before_any_task(role, extra_vars, words, first_task):
    out = run_role(role, extra_vars)
    assert all(word in out for word in words), out
    assert first_task not in out
