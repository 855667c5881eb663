"""gpu_facts against nvidia-smi outputs recorded on real machines (no GPU exists here)."""
from __future__ import annotations

import pytest


def facts_for(run_module, smi_fixture, machine, **extra):
    folder = smi_fixture(machine)
    args = {"nvidia_smi_path": str(folder / "nvidia-smi"), "sysfs_root": str(folder / "sysfs")}
    args.update(extra)
    result = run_module("gpu_facts", args)
    assert result["_rc"] == 0, result
    assert result["changed"] is False
    assert result["ansible_facts"]["gpu_facts"] == result["gpu_facts"]
    return result["gpu_facts"]


def test_single_consumer_gpu(run_module, smi_fixture):
    facts = facts_for(run_module, smi_fixture, "rtx4090-1gpu")
    assert facts["usable"] is True and facts["reason"] is None
    assert facts["gpu_count"] == 1
    gpu = facts["gpus"][0]
    assert gpu["name"] == "NVIDIA GeForce RTX 4090"
    assert gpu["memory_total_mib"] == 24564 and gpu["memory_free_mib"] == 23707
    assert gpu["compute_capability"] == "8.9"
    assert gpu["mig_mode"] is None  # "[N/A]" on GeForce: unknown, not "disabled"
    assert gpu["ecc_errors_uncorrected_volatile"] is None
    assert gpu["power_limit_w"] == 450.0 and gpu["temperature_c"] == 41
    assert facts["driver_version"] == "550.54.15" and facts["cuda_driver_version"] == "12.4"
    assert facts["nvlink"] == {"present": False, "active_links": 0}
    assert facts["fabric_manager_required"] is False


def test_hgx_h100_with_nvlink_and_nvswitch(run_module, smi_fixture):
    facts = facts_for(run_module, smi_fixture, "h100-sxm-8gpu")
    assert facts["gpu_count"] == 8
    assert [gpu["index"] for gpu in facts["gpus"]] == list(range(8))
    assert {gpu["pci_bus_id"] for gpu in facts["gpus"]} >= {"00000000:18:00.0", "00000000:DB:00.0"}
    assert all(gpu["nvlink_active_links"] == 18 for gpu in facts["gpus"])
    assert facts["nvlink"] == {"present": True, "active_links": 144}
    assert facts["nvswitch"] == {"present": True, "count": 4}
    assert facts["fabric_manager_required"] is True
    assert facts["memory_total_mib_min"] == 81559
    assert all(gpu["persistence_mode"] is True and gpu["ecc_mode"] is True for gpu in facts["gpus"])
    assert facts["devices_without_nvidia_driver"] == []
    assert len([dev for dev in facts["pci_devices"] if dev["kind"] == "gpu"]) == 8


def test_mig_instances_are_listed_per_gpu(run_module, smi_fixture):
    facts = facts_for(run_module, smi_fixture, "a100-mig")
    assert facts["mig_enabled"] is True
    gpu0, gpu1 = facts["gpus"]
    assert gpu0["mig_mode"] is True and gpu1["mig_mode"] is False
    assert [dev["profile"] for dev in gpu0["mig_devices"]] == ["3g.40gb", "2g.20gb", "1g.10gb"]
    assert gpu0["mig_devices"][0]["uuid"].startswith("MIG-")
    assert gpu1["mig_devices"] == []
    assert gpu0["nvlink_active_links"] == 2  # the <inactive> link is not counted
    assert facts["cuda_driver_version"] == "12.2"


@pytest.mark.parametrize("machine, reason_part", [
    ("version-mismatch", "version mismatch"),
    ("driver-not-loaded", "kernel driver not loaded"),
])
def test_broken_driver_is_a_reason_not_a_failure(run_module, smi_fixture, machine, reason_part):
    facts = facts_for(run_module, smi_fixture, machine)
    assert facts["usable"] is False and facts["gpu_count"] == 0 and facts["gpus"] == []
    assert reason_part in facts["reason"]


def test_cards_without_the_nvidia_driver_are_reported(run_module, smi_fixture):
    facts = facts_for(run_module, smi_fixture, "driver-not-loaded")
    unbound = {dev["address"]: dev["driver"] for dev in facts["devices_without_nvidia_driver"]}
    assert unbound == {"0000:3b:00.0": "nouveau", "0000:af:00.0": None}  # audio functions ignored


def test_no_nvidia_smi_at_all(run_module, tmp_path):
    result = run_module("gpu_facts", {"nvidia_smi_path": str(tmp_path / "missing"), "sysfs_root": str(tmp_path)})
    facts = result["gpu_facts"]
    assert result["_rc"] == 0
    assert facts["gpu_count"] == 0 and "not found" in facts["reason"]
    assert facts["pci_devices"] == []


def test_hung_nvidia_smi_times_out_with_a_reason(run_module, tmp_path):
    hanging = tmp_path / "nvidia-smi"
    hanging.write_text("#!/bin/sh\nsleep 30\n")
    hanging.chmod(0o755)
    facts = run_module("gpu_facts", {"nvidia_smi_path": str(hanging), "sysfs_root": str(tmp_path), "timeout": 1})["gpu_facts"]
    assert facts["usable"] is False and "timed out" in facts["reason"]


def test_check_mode_gives_the_same_facts(run_module, smi_fixture):
    folder = smi_fixture("a100-mig")
    args = {"nvidia_smi_path": str(folder / "nvidia-smi"), "sysfs_root": str(folder / "sysfs")}
    normal = run_module("gpu_facts", args)["gpu_facts"]
    checked = run_module("gpu_facts", args, check_mode=True)["gpu_facts"]
    assert normal == checked
