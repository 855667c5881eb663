# SPDX-License-Identifier: Apache-2.0
"""Read NVIDIA GPU state from nvidia-smi and sysfs into plain dictionaries.

Kept apart from the gpu_facts module so that preflight, the driver role and unit tests share
one parser. Standard library only: this runs on the target nodes.
"""
from __future__ import annotations

import os
import re

NVIDIA_PCI_VENDOR = "0x10de"
# PCI base classes: 0x03 display controllers (GPUs), 0x0680 "other bridge" (NVSwitch).
GPU_CLASS_PREFIX = "0x03"
NVSWITCH_CLASS_PREFIX = "0x0680"

# (query field, result key, converter); order is the CSV column order.
QUERY_FIELDS = [
    ("index", "index", "int"),
    ("name", "name", "str"),
    ("uuid", "uuid", "str"),
    ("pci.bus_id", "pci_bus_id", "str"),
    ("memory.total", "memory_total_mib", "int"),
    ("memory.used", "memory_used_mib", "int"),
    ("memory.free", "memory_free_mib", "int"),
    ("compute_cap", "compute_capability", "str"),
    ("persistence_mode", "persistence_mode", "bool"),
    ("mig.mode.current", "mig_mode", "bool"),
    ("ecc.mode.current", "ecc_mode", "bool"),
    ("ecc.errors.uncorrected.volatile.total", "ecc_errors_uncorrected_volatile", "int"),
    ("power.limit", "power_limit_w", "float"),
    ("temperature.gpu", "temperature_c", "int"),
    ("driver_version", "driver_version", "str"),
]
QUERY_ARG = "--query-gpu=" + ",".join(spec[0] for spec in QUERY_FIELDS)

# nvidia-smi failure texts, most specific first, with the reason reported to the user.
FAILURE_PATTERNS = [
    ("Driver/library version mismatch",
     "driver/library version mismatch: the loaded kernel module differs from the installed "
     "user-space driver; reboot (or reload the nvidia modules) to load the installed version"),
    ("couldn't communicate with the NVIDIA driver",
     "NVIDIA kernel driver not loaded: nvidia-smi could not talk to it"),
    ("No devices were found", "no NVIDIA GPU device found by the driver"),
    ("NVML Shared Library Not Found", "libnvidia-ml (NVML) not found: the driver's user-space part is missing"),
    ("Unable to determine the device handle", "a GPU is in an error state (unable to get its device handle)"),
]

_NA_VALUES = {"", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", "[Insufficient Permissions]"}


def _convert(value: str, kind: str):
    value = value.strip()
    if value in _NA_VALUES:
        return None
    if kind == "int":
        try:
            return int(float(value))
        except ValueError:
            return None
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            return None
    if kind == "bool":
        return value.lower() in ("enabled", "on", "yes")
    return value


def classify_failure(output: str) -> str:
    """Turn nvidia-smi's error text into a reason an operator can act on."""
    for needle, reason in FAILURE_PATTERNS:
        if needle.lower() in output.lower():
            return reason
    first_line = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
    return "nvidia-smi failed: %s" % first_line


def parse_query_gpu(csv_text: str) -> list:
    """Parse `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` output."""
    gpus = []
    for line in csv_text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(QUERY_FIELDS):
            raise ValueError("unexpected nvidia-smi CSV row (%d columns, expected %d): %r"
                             % (len(cells), len(QUERY_FIELDS), line))
        gpus.append({key: _convert(cell, kind) for (_field, key, kind), cell in zip(QUERY_FIELDS, cells)})
    return gpus


def parse_cuda_version(query_text: str):
    """The CUDA version the driver supports, from the header of `nvidia-smi -q`."""
    match = re.search(r"^CUDA Version\s*:\s*([0-9.]+)", query_text, re.MULTILINE)
    return match.group(1) if match else None


def parse_mig_devices(list_text: str) -> dict:
    """Map GPU index -> MIG devices from `nvidia-smi -L`."""
    devices: dict = {}
    current = None
    for line in list_text.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        if gpu:
            current = int(gpu.group(1))
            continue
        mig = re.match(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)", line)
        if mig and current is not None:
            devices.setdefault(current, []).append(
                {"profile": mig.group(1), "device": int(mig.group(2)), "uuid": mig.group(3)})
    return devices


def parse_nvlink_status(status_text: str) -> dict:
    """Map GPU index -> {'active': n, 'gbps_per_link': x} from `nvidia-smi nvlink --status`."""
    links: dict = {}
    current = None
    for line in status_text.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        if gpu:
            current = int(gpu.group(1))
            links[current] = {"active": 0, "inactive": 0, "gbps_per_link": None}
            continue
        link = re.match(r"^\s+Link \d+:\s*(.*)$", line)
        if link and current is not None:
            speed = re.match(r"([0-9.]+) GB/s", link.group(1))
            if speed:
                links[current]["active"] += 1
                links[current]["gbps_per_link"] = float(speed.group(1))
            else:
                links[current]["inactive"] += 1
    return links


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def scan_pci(sysfs_root: str) -> list:
    """NVIDIA PCI functions seen in sysfs, with the kernel driver bound to each (None if unbound)."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        addresses = sorted(os.listdir(base))
    except OSError:
        return []
    devices = []
    for address in addresses:
        path = os.path.join(base, address)
        if _read(os.path.join(path, "vendor")).lower() != NVIDIA_PCI_VENDOR:
            continue
        pci_class = _read(os.path.join(path, "class")).lower()
        if pci_class.startswith(GPU_CLASS_PREFIX):
            kind = "gpu"
        elif pci_class.startswith(NVSWITCH_CLASS_PREFIX):
            kind = "nvswitch"
        else:
            continue  # audio and USB functions of consumer cards
        driver_link = os.path.join(path, "driver")
        driver = os.path.basename(os.readlink(driver_link)) if os.path.islink(driver_link) else None
        devices.append({"address": address, "kind": kind, "class": pci_class,
                        "device_id": _read(os.path.join(path, "device")).lower(), "driver": driver})
    return devices
