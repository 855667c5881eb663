"""preflight_check: real disk, memory, os-release and Python of this machine; recorded GPU facts."""
from __future__ import annotations

import pytest

AUTOGLM = dict(params_billion=10.3, context_length=25480, num_layers=40, num_kv_heads=2, head_dim=128)
RELAXED = dict(ram="skip", os="skip", python="skip", clock="skip", disk="skip")


@pytest.fixture
def gpu_facts_of(run_module, smi_fixture):
    def gather(machine):
        folder = smi_fixture(machine)
        return run_module("gpu_facts", {"nvidia_smi_path": str(folder / "nvidia-smi"),
                                        "sysfs_root": str(folder / "sysfs")})["gpu_facts"]
    return gather


def preflight(run_module, tmp_path, gpu_facts, checks=None, model=None, **extra):
    args = dict(host="node7", gpu_facts=gpu_facts, weights_path=str(tmp_path / "models" / "autoglm"),
                model=dict(AUTOGLM, **(model or {})), checks=dict(RELAXED, **(checks or {})))
    args.update(extra)
    return run_module("preflight_check", args)


def test_a_24gb_card_fails_vram_with_host_and_numbers(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("rtx4090-1gpu"))
    assert result["failed"] is True and result["failed_checks"] == ["vram"]
    assert "node7" in result["msg"]
    assert "GPU 0 (NVIDIA GeForce RTX 4090) has 24.0 GiB" in result["msg"]
    assert "needs 25.2 GiB per GPU" in result["msg"] and "25480 tokens" in result["msg"]


def test_shorter_context_and_higher_utilisation_fit_the_same_card(run_module, tmp_path, gpu_facts_of):
    model = {"context_length": 4096, "gpu_memory_utilization": 0.95}  # (19.19 + 0.16 + 2.5) / 0.95 = 23.0
    result = preflight(run_module, tmp_path, gpu_facts_of("rtx4090-1gpu"), model=model)
    assert result.get("failed") is not True, result.get("msg", result)
    assert [c["status"] for c in result["checks"] if c["name"] in ("gpu", "vram")] == ["passed", "passed"]


def test_hgx_passes_with_tensor_parallel_8(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("h100-sxm-8gpu"), model={"tensor_parallel_size": 8})
    assert result.get("failed") is not True
    assert result["vram"]["tensor_parallel_size"] == 8


def test_too_few_gpus_for_tensor_parallel(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("rtx4090-1gpu"), model={"tensor_parallel_size": 2, "context_length": 4096})
    assert result["failed_checks"] == ["gpu", "vram"]
    assert "node7: 1 usable GPU(s), the model needs 2" in result["msg"]


def test_no_gpu_in_warn_mode_passes_with_warnings(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("version-mismatch"), checks={"gpu": "warn", "vram": "warn"})
    assert result.get("failed") is not True
    assert any("version mismatch" in str(warning) for warning in result["warnings"])  # 2.19 structures warnings
    assert {c["name"]: c["status"] for c in result["checks"]}["vram"] == "failed"


def test_explicit_vram_need_overrides_the_formula(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("h100-sxm-8gpu"), model={"vram_per_gpu_gib": 90})
    assert "needs 90.0 GiB per GPU (set explicitly)" in result["msg"]


def test_disk_ram_os_python_measured_on_this_machine(run_module, tmp_path, gpu_facts_of):
    facts = gpu_facts_of("h100-sxm-8gpu")
    ok = preflight(run_module, tmp_path, facts, checks=dict(disk="enforce", ram="enforce", os="enforce", python="enforce"),
                   min_ram_gib=0.5, disk_headroom_gib=0, model={"size_gib": 0.001}, supported_os=["debian 12"])
    assert ok.get("failed") is not True, ok.get("msg")
    messages = {c["name"]: c["message"] for c in ok["checks"]}
    assert "free at" in messages["disk"] and str(tmp_path) in messages["disk"]
    bad = preflight(run_module, tmp_path, facts, checks=dict(disk="enforce", ram="enforce", os="enforce", python="enforce"),
                    min_ram_gib=1e6, disk_headroom_gib=1e9, supported_os=["rocky 9"], min_python="9.0")
    assert bad["failed_checks"] == ["disk", "ram", "os", "python"]
    assert "operating system 'debian 12', supported: rocky 9" in bad["msg"]
    assert "at least 1000000.0 GiB needed" in bad["msg"]


def test_bad_mode_is_refused_naming_the_option(run_module, tmp_path, gpu_facts_of):
    result = preflight(run_module, tmp_path, gpu_facts_of("rtx4090-1gpu"), checks={"vram": "maybe"})
    assert result["failed"] is True and "vram" in result["msg"] and "maybe" in result["msg"]


def test_check_mode_behaves_the_same(run_module, tmp_path, gpu_facts_of):
    args = dict(host="n", gpu_facts=gpu_facts_of("rtx4090-1gpu"), weights_path=str(tmp_path),
                model=AUTOGLM, checks=RELAXED)
    assert run_module("preflight_check", args, check_mode=True)["failed_checks"] == ["vram"]
