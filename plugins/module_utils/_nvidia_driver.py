# SPDX-License-Identifier: Apache-2.0
"""Versions of the NVIDIA driver: the loaded kernel module and the installed package.

The driver role compares the two to tell "reboot required" and the "Driver/library version
mismatch" apart from a healthy host. Standard library only: this runs on the target nodes.
"""
from __future__ import annotations

import re

# /proc/driver/nvidia/version, first line, for example:
#   NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (...)  <date>
#   NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023
_NVRM_LINE = re.compile(r"^NVRM version:\s*(?P<what>.*?)\s+(?P<version>\d+\.\d+(?:\.\d+)?)(?:\s|$)", re.MULTILINE)
# /sys/module/nvidia/version holds the bare version.
_BARE_VERSION = re.compile(r"^\s*(\d+\.\d+(?:\.\d+)?)\s*$")
# Upstream part of a driver package version: epoch and packaging revision stripped.
_UPSTREAM = re.compile(r"^(?:\d+:)?(?P<upstream>\d+\.\d+(?:\.\d+)?)(?:[-~+].*)?$")


def parse_loaded_version(text: str) -> dict | None:
    """Version and flavour of the loaded module from /proc/driver/nvidia/version or /sys/module/nvidia/version.

    Returns None when the text names no version (an empty or foreign file).
    """
    match = _NVRM_LINE.search(text)
    if match:
        what = match.group("what")
        return {"version": match.group("version"),
                "flavour": "open" if "Open Kernel Module" in what else "proprietary"}
    bare = _BARE_VERSION.match(text)
    if bare:
        return {"version": bare.group(1), "flavour": None}
    return None


def upstream_version(package_version: str | None) -> str | None:
    """580.95.05 from a deb or rpm version such as 580.95.05-1, 1:580.95.05-0ubuntu1 or 3:580.95.05-1.el9."""
    if not package_version:
        return None
    match = _UPSTREAM.match(package_version.strip())
    return match.group("upstream") if match else None


def reboot_reasons(installed: str | None, loaded: str | None, nouveau_devices: list) -> list:
    """Why this host needs a reboot before the installed driver can run (empty: it does not)."""
    reasons = []
    if nouveau_devices:
        reasons.append("nouveau is bound to %s; it is blacklisted now and goes away with a reboot"
                       % ", ".join(nouveau_devices))
    if installed and loaded and installed != loaded:
        reasons.append("the loaded nvidia kernel module is %s but the installed driver is %s "
                       "(a Driver/library version mismatch until the host reboots)" % (loaded, installed))
    elif installed and not loaded and not nouveau_devices:
        reasons.append("the nvidia kernel module of driver %s is installed but not loaded" % installed)
    return reasons
