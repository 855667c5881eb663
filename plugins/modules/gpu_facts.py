#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Gather facts about NVIDIA GPUs, the driver, CUDA, MIG, NVLink and NVSwitch
version_added: "0.1.0"
description:
  - Reads C(nvidia-smi) (CSV query, C(-q), C(-L), C(nvlink --status)) and the PCI devices in sysfs.
  - Never fails for a host without a usable GPU; it returns RV(gpu_facts.gpu_count=0) with a RV(gpu_facts.reason) and
    lists NVIDIA PCI devices that have no driver bound (or a driver other than C(nvidia)).
  - Sets the C(gpu_facts) fact, also returned at the top level of the result.
options:
  nvidia_smi_path:
    description:
      - Path of the C(nvidia-smi) binary. Looked up in E(PATH) when not set.
    type: path
  sysfs_root:
    description:
      - Root of sysfs, for reading PCI devices.
    type: path
    default: /sys
  timeout:
    description:
      - Seconds each C(nvidia-smi) call may take before it counts as failed (a GPU that fell off
        the bus can hang it).
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Only reads; behaves the same in check mode.
  diff_mode:
    support: none
    description: Reads only; there is nothing to diff.
  facts:
    support: full
    description: Sets the host fact C(gpu_facts), the same as RV(gpu_facts).
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Gather GPU facts
  autoglm.deploy.gpu_facts:

- name: Show the GPUs
  ansible.builtin.debug:
    msg: "{{ ansible_facts['gpu_facts']['gpu_count'] }} GPUs, driver {{ ansible_facts['gpu_facts']['driver_version'] }}"
"""

RETURN = r"""
gpu_facts:
  description: GPU facts (also set as C(ansible_facts['gpu_facts'])).
  returned: always
  type: dict
  contains:
    usable:
      description: Whether nvidia-smi answered and listed at least one GPU.
      type: bool
    reason:
      description: Why there is no usable GPU (null when RV(gpu_facts.usable)).
      type: str
    gpu_count:
      description: Number of GPUs nvidia-smi reports.
      type: int
    gpus:
      description: >-
        One entry per GPU: index, name, uuid, pci_bus_id, memory_total_mib, memory_used_mib,
        memory_free_mib, compute_capability, persistence_mode, mig_mode, mig_devices, ecc_mode,
        ecc_errors_uncorrected_volatile, power_limit_w, temperature_c, nvlink_active_links.
      type: list
      elements: dict
    driver_version:
      description: Version of the installed user-space driver as nvidia-smi reports it.
      type: str
    cuda_driver_version:
      description: Highest CUDA version the driver supports.
      type: str
    memory_total_mib_min:
      description: Smallest memory of any GPU (what tensor-parallel sizing must fit in).
      type: int
    mig_enabled:
      description: Whether MIG mode is on for any GPU.
      type: bool
    nvlink:
      description: "C(present): any active NVLink; C(active_links): total active links."
      type: dict
    nvswitch:
      description: "C(count) of NVSwitch PCI devices; C(present)."
      type: dict
    fabric_manager_required:
      description: True when NVSwitches are present (HGX/DGX boards need nvidia-fabricmanager).
      type: bool
    pci_devices:
      description: NVIDIA GPU and NVSwitch PCI functions seen in sysfs, with their bound driver.
      type: list
      elements: dict
    devices_without_nvidia_driver:
      description: NVIDIA GPUs in sysfs bound to no driver or to another driver (such as nouveau).
      type: list
      elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _nvidia_smi as smi


class GpuFacts:
    """Runs nvidia-smi and assembles the facts; every failure becomes a reason, not an error."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.params["nvidia_smi_path"] or module.get_bin_path("nvidia-smi")
        self.timeout = module.params["timeout"]

    def _smi(self, *args):
        rc, out, err = self.module.run_command(
            ["timeout", str(self.timeout), self.binary, *list(args)],
            environ_update={"LC_ALL": "C", "LANG": "C"})
        if rc == 124:
            return rc, "", "nvidia-smi timed out after %ds (a GPU may have fallen off the bus)" % self.timeout
        return rc, out, err

    def gather(self) -> dict:
        pci = smi.scan_pci(self.module.params["sysfs_root"])
        nvswitches = [dev for dev in pci if dev["kind"] == "nvswitch"]
        facts = {
            "usable": False, "reason": None, "gpu_count": 0, "gpus": [],
            "driver_version": None, "cuda_driver_version": None, "memory_total_mib_min": None,
            "mig_enabled": False, "nvlink": {"present": False, "active_links": 0},
            "nvswitch": {"present": bool(nvswitches), "count": len(nvswitches)},
            "fabric_manager_required": bool(nvswitches),
            "pci_devices": pci,
            "devices_without_nvidia_driver": [dev for dev in pci if dev["kind"] == "gpu" and dev["driver"] != "nvidia"],
        }
        if not self.binary or not os.access(self.binary, os.X_OK):
            facts["reason"] = "nvidia-smi not found%s: the NVIDIA driver is not installed" % (
                " at %s" % self.binary if self.binary else "")
            return facts
        rc, out, err = self._smi(smi.QUERY_ARG, "--format=csv,noheader,nounits")
        if rc != 0:
            facts["reason"] = smi.classify_failure(out + "\n" + err)
            return facts
        try:
            gpus = smi.parse_query_gpu(out)
        except ValueError as exc:
            facts["reason"] = str(exc)
            return facts
        if not gpus:
            facts["reason"] = "nvidia-smi listed no GPU"
            return facts

        rc, out, err = self._smi("-q", "-d", "COMPUTE")
        facts["cuda_driver_version"] = smi.parse_cuda_version(out) if rc == 0 else None

        mig = {}
        if any(gpu["mig_mode"] for gpu in gpus):
            rc, out, err = self._smi("-L")
            mig = smi.parse_mig_devices(out) if rc == 0 else {}
        rc, out, err = self._smi("nvlink", "--status")
        links = smi.parse_nvlink_status(out) if rc == 0 else {}

        for gpu in gpus:
            gpu["mig_devices"] = mig.get(gpu["index"], [])
            gpu["nvlink_active_links"] = links.get(gpu["index"], {}).get("active", 0)
        active_links = sum(gpu["nvlink_active_links"] for gpu in gpus)
        memories = [gpu["memory_total_mib"] for gpu in gpus if gpu["memory_total_mib"] is not None]
        facts.update({
            "usable": True, "gpu_count": len(gpus), "gpus": gpus,
            "driver_version": gpus[0]["driver_version"],
            "memory_total_mib_min": min(memories) if memories else None,
            "mig_enabled": any(gpu["mig_mode"] for gpu in gpus),
            "nvlink": {"present": active_links > 0, "active_links": active_links},
        })
        return facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi_path=dict(type="path"),
            sysfs_root=dict(type="path", default="/sys"),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    facts = GpuFacts(module).gather()
    module.exit_json(changed=False, gpu_facts=facts, ansible_facts={"gpu_facts": facts})


if __name__ == "__main__":
    main()
