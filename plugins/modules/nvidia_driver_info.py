#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_driver_info
short_description: Compare the installed NVIDIA driver package with the loaded kernel module
version_added: "0.1.0"
description:
  - Reads the version of the loaded C(nvidia) kernel module from O(loaded_version_file)
    (C(/proc/driver/nvidia/version)), or from C(/sys/module/nvidia/version) under O(sysfs_root),
    and the version of the installed driver package from the package database (C(dpkg-query) or C(rpm)).
  - Says whether the host must reboot before the installed driver can run, and why (a loaded
    module of another version (what nvidia-smi reports as "Driver/library version mismatch"),
    cards still bound to nouveau, or an installed module that is not loaded).
  - Only reads; never loads modules or reboots.
options:
  package:
    description:
      - Driver package whose version is the installed driver version (for example C(nvidia-open-580)
        or C(cuda-drivers-580)).
    type: str
    required: true
  package_manager:
    description:
      - Package database to read; C(auto) picks C(dpkg-query) when present, else C(rpm).
    type: str
    default: auto
    choices: [auto, apt, dnf]
  loaded_version_file:
    description:
      - File naming the loaded module's version, in the format of C(/proc/driver/nvidia/version)
        or C(/sys/module/nvidia/version).
      - Point it elsewhere to read a recorded file (a chroot image, tests).
    type: path
    default: /proc/driver/nvidia/version
  sysfs_root:
    description:
      - Root of sysfs; C(<sysfs_root>/module/nvidia/version) is read when O(loaded_version_file) is absent.
    type: path
    default: /sys
  nouveau_devices:
    description:
      - PCI addresses of NVIDIA GPUs bound to nouveau (from C(gpu_facts.devices_without_nvidia_driver)).
    type: list
    elements: str
    default: []
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
- name: Compare the installed driver with the loaded kernel module
  autoglm.deploy.nvidia_driver_info:
    package: nvidia-open-580
    nouveau_devices: "{{ ansible_facts['gpu_facts']['devices_without_nvidia_driver']
                         | selectattr('driver', 'equalto', 'nouveau') | map(attribute='address') | list }}"
  register: driver

- name: Stop when the host needs a reboot
  ansible.builtin.fail:
    msg: "{{ driver.reboot_reasons | join('; ') }}"
  when: driver.reboot_required
"""

RETURN = r"""
installed_version:
  description: Upstream version of the installed driver package (C(580.95.05)); null when not installed.
  returned: always
  type: str
  sample: 580.95.05
installed_package_version:
  description: Full package version as the package database has it.
  returned: always
  type: str
  sample: 580.95.05-1
loaded_version:
  description: Version of the loaded C(nvidia) kernel module; null when none is loaded.
  returned: always
  type: str
  sample: 580.95.05
loaded_flavour:
  description: C(open) or C(proprietary) kernel module, when the version file says (null otherwise).
  returned: always
  type: str
loaded_version_source:
  description: File the loaded version was read from; null when none had one.
  returned: always
  type: str
versions_match:
  description: True when a module is loaded and its version equals the installed package's.
  returned: always
  type: bool
reboot_required:
  description: True when the installed driver cannot run until the host reboots.
  returned: always
  type: bool
reboot_reasons:
  description: Why a reboot is required, one sentence each; empty when it is not.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _nvidia_driver as drv


class DriverInfo:
    """Reads the two versions and derives whether a reboot is needed."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.params = module.params

    def _package_version(self):
        name = self.params["package"]
        manager = self.params["package_manager"]
        dpkg = self.module.get_bin_path("dpkg-query")
        if manager == "apt" or (manager == "auto" and dpkg):
            if not dpkg:
                self.module.fail_json(msg="package_manager=apt but dpkg-query is not on this host; "
                                          "set package_manager to the host's package manager")
            args = [dpkg, "-W", "-f", "${db:Status-Abbrev}|${Version}", name]
        else:
            rpm = self.module.get_bin_path("rpm", required=True)
            args = [rpm, "-q", "--qf", "ii |%{EPOCHNUM}:%{VERSION}-%{RELEASE}", name]
        rc, out, _err = self.module.run_command(args, environ_update={"LC_ALL": "C", "LANG": "C"})
        if rc != 0:
            return None  # not installed: both tools exit non-zero
        status, _sep, version = out.strip().partition("|")
        return version if status.strip() in ("ii", "hi") and version else None

    def _loaded(self):
        candidates = [self.params["loaded_version_file"],
                      os.path.join(self.params["sysfs_root"], "module", "nvidia", "version")]
        for path in candidates:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            parsed = drv.parse_loaded_version(text)
            if parsed:
                return parsed, path
        return None, None

    def gather(self) -> dict:
        package_version = self._package_version()
        installed = drv.upstream_version(package_version)
        loaded, source = self._loaded()
        loaded_version = loaded["version"] if loaded else None
        reasons = drv.reboot_reasons(installed, loaded_version, self.params["nouveau_devices"])
        return {
            "installed_version": installed,
            "installed_package_version": package_version,
            "loaded_version": loaded_version,
            "loaded_flavour": loaded["flavour"] if loaded else None,
            "loaded_version_source": source,
            "versions_match": bool(installed and loaded_version and installed == loaded_version),
            "reboot_required": bool(reasons),
            "reboot_reasons": reasons,
        }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            package=dict(type="str", required=True),
            package_manager=dict(type="str", default="auto", choices=["auto", "apt", "dnf"]),
            loaded_version_file=dict(type="path", default="/proc/driver/nvidia/version"),
            sysfs_root=dict(type="path", default="/sys"),
            nouveau_devices=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **DriverInfo(module).gather())


if __name__ == "__main__":
    main()
