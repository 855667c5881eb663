"""State on the nodes after the preflight scenario: gpu_facts and preflight_check run on the node's Python."""
from __future__ import annotations

import json

import pytest

AUTOGLM = {"params_billion": 10.3, "context_length": 25480, "num_layers": 40, "num_kv_heads": 2, "head_dim": 128}
REPLAY = "/opt/autoglm-fixtures/rtx4090-1gpu/nvidia-smi"


def module(host, name, args, check=True):
    return host.ansible(name, json.dumps(args) if args else None, check=check)


def test_recorded_gpu_is_read_on_node1(host):
    if host.backend.get_hostname() != "role-node1":
        pytest.skip("role-node1 only")
    facts = module(host, "autoglm.deploy.gpu_facts", {"nvidia_smi_path": REPLAY})["gpu_facts"]
    assert facts["gpu_count"] == 1 and facts["gpus"][0]["memory_total_mib"] == 24564
    assert facts["cuda_driver_version"] == "12.4"


def test_nodes_without_gpu_report_a_reason(host):
    if host.backend.get_hostname() == "role-node1":
        pytest.skip("role-node1 has a recorded GPU")
    facts = module(host, "autoglm.deploy.gpu_facts", {})["gpu_facts"]
    assert facts["usable"] is False and facts["gpu_count"] == 0
    assert "nvidia-smi not found" in facts["reason"]


def test_preflight_failure_names_host_and_numbers(host):
    name = host.backend.get_hostname()
    gpu = module(host, "autoglm.deploy.gpu_facts", {"nvidia_smi_path": REPLAY} if name == "role-node1" else {})["gpu_facts"]
    # ansible-core 2.19's --tree output (what testinfra reads) drops the "failed" key; the module's
    # failed_checks and msg say the same.
    result = module(host, "autoglm.deploy.preflight_check", {
        "host": name, "gpu_facts": gpu, "weights_path": "/srv/models", "model": AUTOGLM,
        "min_ram_gib": 1, "checks": {"clock": "skip"}})
    assert result["failed_checks"]
    assert result["msg"].startswith("Preflight failed on %s:" % name)
    expected = "has 24.0 GiB; the model needs 25.2 GiB per GPU" if name == "role-node1" else "0 usable GPU(s), the model needs 1"
    assert expected in result["msg"]


def test_os_and_python_checked_on_the_node(host):
    result = module(host, "autoglm.deploy.preflight_check", {
        "host": "x", "gpu_facts": {}, "weights_path": "/srv/models", "model": AUTOGLM,
        "min_ram_gib": 1, "disk_headroom_gib": 0, "checks": {"gpu": "skip", "vram": "skip", "clock": "skip", "disk": "skip"}})
    checks = {check["name"]: check for check in result["checks"]}
    assert checks["os"]["status"] == "passed" and "'debian 12'" in checks["os"]["message"]
    assert checks["python"]["status"] == "passed" and "/usr/bin/python3" in checks["python"]["message"]
