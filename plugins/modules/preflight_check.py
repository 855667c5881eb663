#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight_check
short_description: Check that a host can run a model - GPUs, VRAM, disk, RAM, OS, Python, clock
version_added: "0.1.0"
description:
  - Compares what the host has against what the model needs and reports every check with a
    message naming the host and the numbers.
  - The VRAM need per GPU is derived from parameter count, dtype, context length (KV cache)
    and tensor-parallel size, unless O(model.vram_per_gpu_gib) sets it outright.
  - Each check runs in one of three modes, C(enforce) (a failure fails the task),
    C(warn) (a failure becomes a warning) or C(skip).
options:
  host:
    description: Name used in messages (the inventory hostname).
    type: str
    required: true
  gpu_facts:
    description: The C(gpu_facts) fact from M(autoglm.deploy.gpu_facts).
    type: dict
    required: true
  model:
    description: What the model needs.
    type: dict
    required: true
    suboptions:
      params_billion: {description: Parameters in billions., type: float, required: true}
      dtype:
        description: Weight dtype.
        type: str
        default: bfloat16
        choices: [float32, bfloat16, float16, fp8, int8, int4]
      kv_cache_dtype:
        description: KV cache dtype; C(auto) is the weight dtype.
        type: str
        default: auto
        choices: [auto, float32, bfloat16, float16, fp8, int8]
      context_length: {description: Longest sequence the engine must fit (max model len)., type: int, required: true}
      num_layers: {description: Transformer layers (config num_hidden_layers)., type: int, required: true}
      num_kv_heads: {description: KV heads (config num_key_value_heads)., type: int, required: true}
      head_dim: {description: Size of one attention head., type: int, required: true}
      tensor_parallel_size: {description: GPUs one replica spans., type: int, default: 1}
      overhead_gib: {description: 'Activations, CUDA graphs, vision encoder and allocator slack per GPU.', type: float, default: 2.5}
      gpu_memory_utilization: {description: Fraction of VRAM the engine may take., type: float, default: 0.9}
      vram_per_gpu_gib: {description: Explicit VRAM need per GPU; overrides the derivation., type: float}
      size_gib: {description: Size of the weights on disk; derived from parameters and dtype when unset., type: float}
  min_gpus:
    description: GPUs the host must have; O(model.tensor_parallel_size) when unset.
    type: int
  weights_path:
    description: Where the weights will live; free space is measured at its nearest existing parent.
    type: path
    required: true
  disk_headroom_gib:
    description: Free space needed on top of the model size (a second revision during an upgrade, logs).
    type: float
    default: 10
  min_ram_gib:
    description: Memory the host must have.
    type: float
    default: 32
  supported_os:
    description: Operating systems accepted, as C(<ID> <major version>) from os-release (for example C(debian 12)).
    type: list
    elements: str
    default: [debian 12, debian 13, ubuntu 22.04, ubuntu 24.04, rocky 9, rhel 9]
  min_python:
    description: Lowest Python version accepted on the host (the interpreter running this module).
    type: str
    default: "3.9"
  checks:
    description: Mode of each check.
    type: dict
    default: {}
    suboptions:
      gpu: {description: Enough GPUs., type: str, default: enforce, choices: [enforce, warn, skip]}
      vram: {description: Enough VRAM on each GPU the model spans., type: str, default: enforce, choices: [enforce, warn, skip]}
      disk: {description: Enough free disk at O(weights_path)., type: str, default: enforce, choices: [enforce, warn, skip]}
      ram: {description: Enough memory., type: str, default: enforce, choices: [enforce, warn, skip]}
      os: {description: A supported operating system., type: str, default: enforce, choices: [enforce, warn, skip]}
      python: {description: A recent enough Python., type: str, default: enforce, choices: [enforce, warn, skip]}
      clock: {description: 'The clock is synchronised (TLS, tokens and logs depend on it).', type: str, default: warn, choices: [enforce, warn, skip]}
attributes:
  check_mode:
    support: full
    description: Only reads; behaves the same in check mode.
  diff_mode:
    support: none
    description: Reads only; there is nothing to diff.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Check the host can serve AutoGLM-Phone-9B on one GPU
  autoglm.deploy.preflight_check:
    host: "{{ inventory_hostname }}"
    gpu_facts: "{{ ansible_facts['gpu_facts'] }}"
    weights_path: /srv/models
    model:
      params_billion: 10.3
      context_length: 25480
      num_layers: 40
      num_kv_heads: 2
      head_dim: 128
"""

RETURN = r"""
checks:
  description: One entry per check, in order.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Check name., type: str}
    mode: {description: 'O(checks) mode of the check: C(enforce), C(warn) or C(skip).', type: str}
    status: {description: 'C(passed), C(failed) or C(skipped).', type: str}
    message: {description: 'What was measured against what was needed, naming the host.', type: str}
vram:
  description: The per-GPU VRAM breakdown (weights, KV cache, need per GPU).
  returned: always
  type: dict
failed_checks:
  description: Names of the enforced checks that failed.
  returned: always
  type: list
  elements: str
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _sizing

CHECK_NAMES = ("gpu", "vram", "disk", "ram", "os", "python", "clock")
MODES = ["enforce", "warn", "skip"]


def read_os_release(path: str = "/etc/os-release") -> dict:
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value.strip('"')
    except OSError:
        pass
    return values


def os_label(release: dict) -> str:
    """'debian 12', 'ubuntu 22.04', 'rocky 9': the form supported_os is written in."""
    ident = release.get("ID", "unknown").lower()
    version = release.get("VERSION_ID", "")
    if ident not in ("ubuntu",):
        version = version.split(".")[0]
    return ("%s %s" % (ident, version)).strip()


def mem_total_gib(meminfo: str = "/proc/meminfo") -> float:
    with open(meminfo, encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / _sizing.GIB
    raise ValueError("MemTotal missing from %s" % meminfo)


def free_disk_gib(path: str):
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize / _sizing.GIB, probe


def parse_version(text: str) -> tuple:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class Preflight:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.params = module.params
        self.host = self.params["host"]
        self.model = self.params["model"]
        self.gpu = self.params["gpu_facts"]
        self.vram = _sizing.vram_per_gpu_gib(self.model)
        if self.model.get("vram_per_gpu_gib") is not None:
            self.vram["per_gpu_gib"] = self.model["vram_per_gpu_gib"]
            self.vram["explicit"] = True

    # Each check returns (ok, message); messages name the host and the numbers.
    def check_gpu(self):
        need = self.params["min_gpus"] or self.vram["tensor_parallel_size"]
        have = int(self.gpu.get("gpu_count") or 0)
        why = "" if have else " (%s)" % (self.gpu.get("reason") or "no GPU reported")
        return have >= need, "%s: %d usable GPU(s), the model needs %d%s" % (self.host, have, need, why)

    def check_vram(self):
        need = self.vram["per_gpu_gib"]
        tp = self.vram["tensor_parallel_size"]
        gpus = sorted(self.gpu.get("gpus") or [], key=lambda gpu: -(gpu.get("memory_total_mib") or 0))[:tp]
        if len(gpus) < tp:
            return False, "%s: the model needs %d GPU(s) with %.1f GiB each, the host has %d usable GPU(s)" % (
                self.host, tp, need, len(gpus))
        how = "set explicitly" if self.vram.get("explicit") else (
            "weights %.1f GiB + KV cache %.2f GiB for %d tokens, over TP %d, + %.1f GiB overhead, at %d%% utilisation"
            % (self.vram["weights_gib"], self.vram["kv_cache_gib"], self.model["context_length"], tp,
               self.model["overhead_gib"], round(self.model["gpu_memory_utilization"] * 100)))
        short = [gpu for gpu in gpus if (gpu.get("memory_total_mib") or 0) / 1024.0 < need]
        if short:
            names = ", ".join("GPU %s (%s) has %.1f GiB" % (gpu["index"], gpu["name"], gpu["memory_total_mib"] / 1024.0)
                              for gpu in short)
            return False, "%s: %s; the model needs %.1f GiB per GPU (%s)" % (self.host, names, need, how)
        smallest = min(gpu["memory_total_mib"] for gpu in gpus) / 1024.0
        return True, "%s: %d GPU(s) with at least %.1f GiB each, the model needs %.1f GiB per GPU (%s)" % (
            self.host, tp, smallest, need, how)

    def check_disk(self):
        size = self.model.get("size_gib") or self.vram["weights_gib"]
        need = size + self.params["disk_headroom_gib"]
        free, probe = free_disk_gib(self.params["weights_path"])
        return free >= need, "%s: %.1f GiB free at %s (for %s), the model needs %.1f GiB (%.1f GiB of weights + %.1f GiB headroom)" % (
            self.host, free, probe, self.params["weights_path"], need, size, self.params["disk_headroom_gib"])

    def check_ram(self):
        have = mem_total_gib()
        need = self.params["min_ram_gib"]
        return have >= need, "%s: %.1f GiB of RAM, at least %.1f GiB needed" % (self.host, have, need)

    def check_os(self):
        label = os_label(read_os_release())
        supported = [entry.lower() for entry in self.params["supported_os"]]
        return label in supported, "%s: operating system '%s', supported: %s" % (self.host, label, ", ".join(supported))

    def check_python(self):
        have = "%d.%d.%d" % sys.version_info[:3]
        need = self.params["min_python"]
        return parse_version(have) >= parse_version(need), "%s: Python %s at %s, at least %s needed" % (
            self.host, have, sys.executable, need)

    def check_clock(self):
        timedatectl = self.module.get_bin_path("timedatectl")
        if timedatectl:
            rc, out, _err = self.module.run_command([timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                                                    environ_update={"LC_ALL": "C"})
            if rc == 0 and out.strip() in ("yes", "no"):
                synced = out.strip() == "yes"
                return synced, "%s: clock %s (timedatectl NTPSynchronized=%s)" % (
                    self.host, "synchronised" if synced else "NOT synchronised", out.strip())
        chronyc = self.module.get_bin_path("chronyc")
        if chronyc:
            rc, out, _err = self.module.run_command([chronyc, "-n", "tracking"], environ_update={"LC_ALL": "C"})
            synced = rc == 0 and "Normal" in out
            return synced, "%s: clock %s (chronyc tracking)" % (self.host, "synchronised" if synced else "NOT synchronised")
        return False, "%s: cannot tell whether the clock is synchronised (no timedatectl answer, no chronyc)" % self.host

    def run(self) -> list:
        modes = self.params["checks"] or {}
        results = []
        for name in CHECK_NAMES:
            mode = modes.get(name) or ("warn" if name == "clock" else "enforce")
            if mode == "skip":
                results.append({"name": name, "mode": mode, "status": "skipped", "message": "%s: %s check skipped" % (self.host, name)})
                continue
            ok, message = getattr(self, "check_" + name)()
            results.append({"name": name, "mode": mode, "status": "passed" if ok else "failed", "message": message})
        return results


def main():
    mode = dict(type="str", choices=MODES)
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            gpu_facts=dict(type="dict", required=True),
            model=dict(type="dict", required=True, options=dict(
                params_billion=dict(type="float", required=True),
                dtype=dict(type="str", default="bfloat16", choices=list(_sizing.DTYPE_BYTES)),
                kv_cache_dtype=dict(type="str", default="auto", choices=["auto", "float32", "bfloat16", "float16", "fp8", "int8"]),
                context_length=dict(type="int", required=True),
                num_layers=dict(type="int", required=True),
                num_kv_heads=dict(type="int", required=True),
                head_dim=dict(type="int", required=True),
                tensor_parallel_size=dict(type="int", default=1),
                overhead_gib=dict(type="float", default=2.5),
                gpu_memory_utilization=dict(type="float", default=0.9),
                vram_per_gpu_gib=dict(type="float"),
                size_gib=dict(type="float"),
            )),
            min_gpus=dict(type="int"),
            weights_path=dict(type="path", required=True),
            disk_headroom_gib=dict(type="float", default=10),
            min_ram_gib=dict(type="float", default=32),
            supported_os=dict(type="list", elements="str",
                              default=["debian 12", "debian 13", "ubuntu 22.04", "ubuntu 24.04", "rocky 9", "rhel 9"]),
            min_python=dict(type="str", default="3.9"),
            checks=dict(type="dict", default={}, options={
                name: dict(mode, default="warn" if name == "clock" else "enforce") for name in CHECK_NAMES}),
        ),
        supports_check_mode=True,
    )
    if not 0 < module.params["model"]["gpu_memory_utilization"] <= 1:
        module.fail_json(msg="model.gpu_memory_utilization must be in (0, 1], got %s"
                         % module.params["model"]["gpu_memory_utilization"])
    preflight = Preflight(module)
    checks = preflight.run()
    for check in checks:
        if check["status"] == "failed" and check["mode"] == "warn":
            module.warn(check["message"])
    failed = [check for check in checks if check["status"] == "failed" and check["mode"] == "enforce"]
    result = dict(changed=False, checks=checks, vram=preflight.vram, failed_checks=[check["name"] for check in failed])
    if failed:
        module.fail_json(msg="Preflight failed on %s: %s" % (preflight.host, "; ".join(check["message"] for check in failed)),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
