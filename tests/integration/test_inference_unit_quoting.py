"""The inference unit's ExecStart as Ansible renders it from the role's template: every argv element reaches
the engine intact once systemd has unquoted it (JSON flag values keep their double quotes; %, $, quotes and
backslashes survive). Molecule checks the same units against a real systemd; this catches quoting mistakes
in seconds."""
from __future__ import annotations

import json
import shlex

import pytest
from support.playbook import REPO, run_local_playbook

ROLE = REPO / "roles" / "inference_service"
AWKWARD = [
    "50% of $HOME",      # systemd specifiers and variables
    "it's",              # a single quote forces double quoting
    'say "hi" \\ now',   # double quotes and a backslash inside
    '{"a": [1, 2]}',     # JSON with spaces
]  # control characters (C escapes) are checked against a real systemd in molecule/inference_service
CASES = {"vllm": {"backend": "vllm", "extra": []}, "sglang": {"backend": "sglang", "extra": []},
         "awkward": {"backend": "transformers", "extra": [w for arg in AWKWARD for w in ("--note", arg)]},
         "allowlist": {"backend": "transformers", "extra": [], "allow": ["10.0.0.0/8", "192.0.2.10"]}}

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: [{role}/defaults/main.yml, {role}/vars/main.yml]
  vars:
    ansible_managed: Ansible managed
    __inference_service_tp: 2
    __inference_service_gpu_count: 2
    __inference_service_systemctl: {{stdout: "systemd 252 (252.39-1~deb12u2)"}}
  tasks:
    - name: Render the unit for each case
      ansible.builtin.template:
        src: {role}/templates/service.unit.j2
        dest: "{out}/{{{{ item.key }}}}.service"
        mode: "0644"
      vars:  # task vars: above the role defaults loaded as vars_files
        inference_service_model_path: /srv/models/autoglm/current
        inference_service_backend: "{{{{ item.value.backend }}}}"
        inference_service_transformers_extra_args: "{{{{ item.value.extra }}}}"
        inference_service_ip_address_allow: "{{{{ item.value.allow | default([]) }}}}"
      loop: "{{{{ cases | dict2items }}}}"
"""


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("units")
    playbook = tmp / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, out=tmp))
    rc, _, output = run_local_playbook(playbook, tmp, extra_vars=(json.dumps({"cases": CASES}),))
    assert rc == 0, output
    return {name: (tmp / (name + ".service")).read_text() for name in CASES}


def exec_argv(unit_text):
    """ExecStart split the way systemd does for what the filter emits without control characters: shell-like
    words, then %% and $$ back to % and $."""
    line = next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(line[len("ExecStart="):])
    return [word.replace("%%", "%").replace("$$", "$") for word in words]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_vllm_json_flags_keep_their_quotes(units):
    argv = exec_argv(units["vllm"])
    assert flag(argv, "--mm_processor_kwargs") == '{"max_pixels":5000000}'
    assert flag(argv, "--limit-mm-per-prompt") == '{"image":10}'
    assert flag(argv, "--model") == "/srv/models/autoglm/current"
    assert flag(argv, "--tensor-parallel-size") == "2"


def test_sglang_json_flag_keeps_its_quotes(units):
    argv = exec_argv(units["sglang"])
    assert flag(argv, "--mm-process-config") == '{"image":{"max_pixels":5000000}}'
    assert "--mm-enable-dp-encoder" in argv and flag(argv, "--tp-size") == "2"


def test_extra_args_reach_the_engine_unchanged(units):
    argv = exec_argv(units["awkward"])
    assert argv[-2 * len(AWKWARD):] == [w for arg in AWKWARD for w in ("--note", arg)]


def test_an_allow_list_denies_every_other_address_but_loopback(units):
    assert "IPAddressDeny=any\nIPAddressAllow=localhost 10.0.0.0/8 192.0.2.10\n" in units["allowlist"]
    assert "IPAddress" not in units["vllm"]  # empty: no network filter at all
    # Raw: MemoryMax= takes no specifiers, so systemd would refuse "90%%".
    assert "MemoryMax=90%\nTasksMax=16384\n" in units["vllm"]
