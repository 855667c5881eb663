"""What the roles refuse or derive before an engine starts (issue 16, item 3), run for real on localhost: vLLM's
local media folder is never "/", variables the role no longer reads are refused by name rather than ignored, and
preflight sizes VRAM from the service's own context length, tensor parallel and memory fraction. The rendered
units themselves are checked in test_inference_unit_quoting.py."""
from __future__ import annotations

import json

import pytest
from support.playbook import REPO, run_local_playbook
from support.units import render

H100 = str(REPO / "tests" / "fixtures" / "nvidia-smi" / "h100-sxm-8gpu" / "nvidia-smi")
GPU_CHECKS_ONLY = {"gpu": "warn", "vram": "warn", "disk": "skip", "ram": "skip", "os": "skip", "python": "skip",
                   "clock": "skip"}


def run_role(tmp_path, role, extra, check=False):
    playbook = tmp_path / "role.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.%s]\n" % role)
    return run_local_playbook(playbook, tmp_path, extra_vars=(json.dumps(extra),), check=check)


def failed_tasks(report):
    return [t for t in report["plays"][0]["tasks"] if any(r.get("failed") for r in t["hosts"].values())]


@pytest.mark.parametrize(("extra", "named"), [
    ({"inference_service_allowed_local_media_path": "/"}, "inference_service_allowed_local_media_path"),
    ({"inference_service_vllm_module": "vllm.entrypoints.openai.api_server"}, "inference_service_vllm_executable"),
    ({"inference_service_sglang_mm_process_config": {"image": {"max_pixels": 5000000}}},
     "inference_service_image_max_pixels"),
], ids=["media-root", "removed-vllm-module", "removed-sglang-config"])
def test_refused_before_anything_is_written(tmp_path, extra, named):
    rc, report, output = run_role(tmp_path, "inference_service", dict({"inference_service_api_key": "k"}, **extra),
                                  check=True)
    assert rc != 0, output
    failed = failed_tasks(report)
    assert failed and " : Refuse " in failed[0]["task"]["name"], output
    assert named in json.dumps(failed[0]["hosts"])


def preflight_messages(tmp_path, extra):
    rc, report, output = run_role(tmp_path, "preflight", dict(
        {"preflight_nvidia_smi_path": H100, "preflight_checks": GPU_CHECKS_ONLY}, **extra))
    assert rc == 0, output
    task = next(t for t in report["plays"][0]["tasks"] if t["task"]["name"].endswith(" : Check the host against what the model needs"))
    return " ".join(c["message"] for c in task["hosts"]["localhost"]["checks"])


def test_preflight_is_sized_from_the_service_values(tmp_path):
    messages = preflight_messages(tmp_path, {"inference_service_max_model_len": 32768,
                                             "inference_service_tensor_parallel_size": 4,
                                             "inference_service_vllm_gpu_memory_utilization": 0.8})
    assert "for 32768 tokens, over TP 4" in messages and "at 80% utilisation" in messages, messages


def test_preflight_alone_sizes_as_the_service_defaults_would(tmp_path):
    # No inference_service values: upstream's context, the service's replica layout (a 9B model on 8 H100s is a
    # replica per GPU: TP 1), vLLM's 0.9.
    messages = preflight_messages(tmp_path, {})
    assert "for 25480 tokens, over TP 1" in messages and "at 90% utilisation" in messages, messages
    assert "the model needs 1" in messages, messages


def test_a_key_for_an_engine_that_reads_none_from_its_environment_is_refused(tmp_path):
    # SGLang's descriptor names no API key variable (it reads --api-key only): the key is refused, never put in argv.
    rc, report, output = run_role(tmp_path, "inference_service", {"inference_service_backend": "sglang",
                                                                  "inference_service_api_key": "k"}, check=True)
    assert rc != 0, output
    failed = failed_tasks(report)
    assert failed and "Refuse an API key" in failed[0]["task"]["name"], output
    assert "sglang takes its API key only on the command line" in json.dumps(failed[0]["hosts"])
    assert "transformers, vllm" in json.dumps(failed[0]["hosts"])


def test_an_unknown_engine_is_refused_naming_the_known_ones(tmp_path):
    rc, _report, output = run_role(tmp_path, "inference_service", {"autoglm_backend": "tgi",
                                                                   "inference_service_api_key": "k"}, check=True)
    assert rc != 0 and "unknown inference engine 'tgi'" in output and "sglang, transformers, vllm" in output, output


def test_preflight_follows_the_contract_backend(tmp_path):
    # The engine comes from autoglm_backend, the memory fraction from that engine's own option (vLLM's here).
    messages = preflight_messages(tmp_path, {"autoglm_backend": "vllm", "inference_service_vllm_gpu_memory_utilization": 0.7})
    assert "at 70% utilisation" in messages, messages
    # SGLang has no such option in the role: its descriptor's default, whatever vLLM's variable says.
    messages = preflight_messages(tmp_path, {"autoglm_backend": "sglang", "inference_service_vllm_gpu_memory_utilization": 0.7})
    assert "at 90% utilisation" in messages, messages


def test_the_builtin_server_imports_the_version_of_its_code_it_was_started_with(tmp_path):
    # Each version of the code goes to a folder named by its archive's hash (tasks/main.yml), so a new version
    # never lands under a running replica and a rollback finds the old one; the engines with code of their own
    # get no PYTHONPATH.
    rc, output, text = render(tmp_path, "inference_service", "service.env.j2",
                              {"inference_service_backend": "transformers", "inference_service_transformers_server_dir": "/srv/serve"})
    assert rc == 0, output
    assert 'PYTHONPATH="/srv/serve/0123456789ab"' in text.splitlines(), text
    rc, output, text = render(tmp_path, "inference_service", "service.env.j2", {"inference_service_backend": "vllm"})
    assert rc == 0, output
    assert "PYTHONPATH" not in text
