"""Render the collection's unit and environment templates the way the roles do, without a host: one playbook on
localhost with the role's defaults and vars loaded, the facts the templates read set to a recorded machine's,
and ansible.builtin.template writing each file. Shared by the unit injection and unit security tests.

    rc, output, text = render(tmp_path, "inference_service", "service.unit.j2", {"var": value})   # one file, -e
    rc, output, texts = render_many(tmp_path, {"name": ("model_mirror", SERVICE_UNIT, {...})})

A role whose unit the service_unit scaffold writes names the template SERVICE_UNIT: the scaffold's unit template is
rendered with the variables the role's include_role task passes it (read from the role's tasks), the scaffold's
defaults and vars loaded after the role's.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from support.playbook import REPO, run_local_playbook

ROLES = REPO / "roles"
SERVICE_UNIT = "service_unit"
SYSTEMCTL = "systemd 252 (252.39-1~deb12u2)"


def replica_layout(replicas: int, tensor_parallel_size: int, gpus: int) -> list:
    """The inference_service_replica_layout fact the role sets (autoglm.deploy.engine_replicas): REPLICAS replicas
    from port 8000, each of TENSOR_PARALLEL_SIZE of the node's GPUS GPUs (none on a CPU host)."""
    return [{"host": "localhost", "server": "localhost:%d" % (8000 + i), "port": 8000 + i, "tensor_parallel_size": tensor_parallel_size,
             "gpus": ["GPU-%d" % g for g in range(i * tensor_parallel_size, (i + 1) * tensor_parallel_size)] if gpus else []}
            for i in range(replicas)]


# The facts the inference unit reads, as the role sets them on a CPU host; an 8-GPU H100 node
# (tests/fixtures/nvidia-smi/h100-sxm-8gpu: a 9B model is a replica per GPU) overrides them with GPU_8.
CPU = {"inference_service_replica_layout": replica_layout(1, 1, 0), "__inference_service_gpu_count": 0}
GPU_8 = {"inference_service_replica_layout": replica_layout(8, 1, 8), "__inference_service_gpu_count": 8}

_HEADER = """
- hosts: localhost
  gather_facts: false
  vars_files: {vars_files}
  vars:
    ansible_managed: Ansible managed
    inference_service_replica_layout: {cpu_layout}
    __inference_service_gpu_count: 0
    __inference_service_systemctl: {{stdout: "{systemctl}"}}
    # What the role packs the built-in server's code to (tasks/main.yml); its hash names the code's folder.
    __inference_service_code_archive: {{sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}
  tasks:
"""


def _header(roles) -> str:
    return _HEADER.format(vars_files=_vars_files(roles), systemctl=SYSTEMCTL,
                          cpu_layout=json.dumps(CPU["inference_service_replica_layout"]))


def _vars_files(roles) -> str:
    files = []
    for role in dict.fromkeys(roles):
        files += [str(ROLES / role / "defaults" / "main.yml"), str(ROLES / role / "vars" / "main.yml")]
    return json.dumps(files)


def service_unit_vars(role: str) -> dict:
    """The vars of the role's include_role of autoglm.deploy.service_unit that writes the unit (no tasks_from, or
    tasks_from: unit)."""
    for path in sorted((ROLES / role / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            include = task.get("ansible.builtin.include_role") or {}
            if include.get("name") == "autoglm.deploy.service_unit" and include.get("tasks_from", "unit") in ("unit", "main"):
                return dict(task.get("vars") or {})
    raise AssertionError("%s includes no autoglm.deploy.service_unit unit" % role)


def _source(role: str, template: str) -> tuple:
    """(template path, roles whose defaults and vars it reads, task vars) for render and render_many."""
    if template == SERVICE_UNIT:
        return ROLES / SERVICE_UNIT / "templates" / "unit.service.j2", [role, SERVICE_UNIT], service_unit_vars(role)
    return ROLES / role / "templates" / template, [role], {}


def render(tmp_path: Path, role: str, template: str, extra: dict) -> tuple:
    """(rc, output, text) of one template rendered with extra as extra vars (-e: above everything)."""
    playbook = tmp_path / "render.yml"
    out = tmp_path / "rendered"
    src, roles, task_vars = _source(role, template)
    playbook.write_text(_header(roles)
                        + "    - name: Render the template\n"
                          "      ansible.builtin.template:\n"
                          "        src: %s\n        dest: \"%s\"\n        mode: \"0600\"\n"
                          "      vars: %s\n"
                        % (src, out, json.dumps(task_vars)))
    rc, _unused, output = run_local_playbook(playbook, tmp_path, extra_vars=(json.dumps(extra),))
    return rc, output, (out.read_text() if out.exists() else "")


def render_many(tmp_path: Path, renders: dict) -> tuple:
    """(rc, output, {name: text}) of {name: (role, template, task vars)} in one run; each is written to
    tmp_path/NAME (give unit names a .service suffix: systemd-analyze goes by it)."""
    tasks, roles = [], []
    for name, (role, template, variables) in renders.items():
        src, used, task_vars = _source(role, template)
        roles += used
        tasks.append({"name": "Render " + name,
                      "ansible.builtin.template": {"src": str(src), "dest": str(tmp_path / name), "mode": "0644"},
                      "vars": dict(task_vars, **variables)})
    playbook = tmp_path / "render.yml"
    header = _header(roles)
    playbook.write_text(header + "".join("    - %s\n" % json.dumps(task) for task in tasks))
    rc, _unused, output = run_local_playbook(playbook, tmp_path)
    texts = {name: (tmp_path / name).read_text() for name in renders if (tmp_path / name).exists()}
    return rc, output, texts
