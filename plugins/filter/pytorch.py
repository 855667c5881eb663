# SPDX-License-Identifier: Apache-2.0
"""Filter torch_wheel_tag: which PyTorch wheel build (cu128, cu126, ... or cpu) fits a node's CUDA driver."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: torch_wheel_tag
short_description: The PyTorch wheel build (C(cuXYZ) or C(cpu)) that a CUDA driver can run
version_added: "0.1.0"
description:
  - A CUDA driver runs CUDA runtimes up to its own version (the C(CUDA Version) nvidia-smi prints, which
    M(autoglm.deploy.gpu_facts) returns as C(cuda_driver_version)). This picks the newest build in O(tags)
    that is not newer than the driver, and C(cpu) when there is no driver version (no usable GPU).
  - Fails, naming the driver and the oldest build, when the driver is older than every build offered.
options:
  _input:
    description: CUDA version the driver supports, for example C(12.4); empty or null for no GPU.
    type: str
    required: true
  tags:
    description: PyTorch builds to choose from, for example C([cu130, cu128, cu126]).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
torch_tag: "{{ ansible_facts['gpu_facts']['cuda_driver_version'] | autoglm.deploy.torch_wheel_tag(['cu128', 'cu126']) }}"
"""

RETURN = r"""
_value:
  description: The chosen tag, for example C(cu126), or C(cpu).
  type: str
"""


def _cuda_tuple(text: str) -> tuple:
    parts = str(text).strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError as exc:
        raise AnsibleFilterError("torch_wheel_tag: '%s' is not a CUDA version such as 12.4" % text) from exc


def _tag_tuple(tag: str) -> tuple:
    digits = tag[2:] if tag.startswith("cu") else ""
    if not digits.isdigit() or len(digits) < 3:
        raise AnsibleFilterError("torch_wheel_tag: '%s' is not a PyTorch CUDA build tag such as cu128" % tag)
    return int(digits[:-1]), int(digits[-1])


def torch_wheel_tag(cuda_driver_version, tags) -> str:
    if cuda_driver_version in (None, "") or str(cuda_driver_version).lower() in ("none", "n/a"):
        return "cpu"
    driver = _cuda_tuple(cuda_driver_version)
    builds = sorted(((_tag_tuple(tag), tag) for tag in tags if tag != "cpu"), reverse=True)
    if not builds:
        raise AnsibleFilterError("torch_wheel_tag: no CUDA build tags given to choose from")
    for version, tag in builds:
        if version <= driver:
            return tag
    raise AnsibleFilterError(
        "the NVIDIA driver supports CUDA %s, older than the oldest PyTorch build offered (%s); upgrade the driver "
        "or add an older build tag" % (cuda_driver_version, builds[-1][1]))


class FilterModule:
    def filters(self):
        return {"torch_wheel_tag": torch_wheel_tag}
