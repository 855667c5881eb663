"""The engine descriptors (plugins/filter/engines.py): every engine carries every field, the argv builders give each
engine the flags it reads, metrics are switched on only when scraped and never twice, and the contract's defaults
follow the producing roles' layouts."""
from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.autoglm.deploy.plugins.filter.engines import ENGINES, contract, engine, engine_argv, engine_names, engine_path_inputs

FIELDS = {"argv", "api_key_env", "health_path", "metrics_path", "metrics_args", "readiness_timeout", "address_families",
          "devices", "local_media", "bundled_code", "path_options", "memory_fraction", "pins", "aliases",
          "system_packages", "imports"}
SETTINGS = {"venv": "/v", "model_path": "/m", "served_model_name": "n", "host": "0.0.0.0", "port": 8000,
            "tensor_parallel_size": 2, "max_model_len": 4096, "media_path": "/media",
            "image_size": {"shortest_edge": 12544, "longest_edge": 100}, "image_max_pixels": 100,
            "images_per_prompt": 3, "scraped": False}
OPTIONS = {
    "vllm": {"executable": "/v/bin/vllm", "mm_encoder_tp_mode": "data", "mm_processor_cache_type": "shm",
             "mm_processor_kwargs_override": {"fps": 1}, "chat_template_content_format": "string",
             "limit_mm_per_prompt": {"image": 3}, "gpu_memory_utilization": None, "extra_args": ["--x"]},
    "sglang": {"module": "sglang.launch_server", "mm_enable_dp_encoder": True, "mm_process_config_override": {},
               "extra_args": []},
    "transformers": {"server_dir": "/s", "device": "auto", "dtype": "auto", "max_queue": 1, "max_batch": 2,
                     "default_max_tokens": 3, "max_model_len": None, "threads": None, "extra_args": []},
}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_has_every_field_and_both_flavours(name):
    desc = ENGINES[name]
    assert set(desc) == FIELDS
    assert set(desc["pins"]) == {"cuda", "cpu"} and all("==" in pin for pins in desc["pins"].values() for pin in pins)
    assert desc["health_path"].startswith("/") and desc["readiness_timeout"] > 0
    assert set(desc["path_options"]) <= set(OPTIONS[name])
    assert "argv" not in engine(name)


def test_unknown_engine_names_the_known_ones():
    with pytest.raises(AnsibleFilterError, match="sglang, transformers, vllm"):
        engine("tgi")


def test_api_key_variables():
    # SGLang reads its key from --api-key only: no variable, so the role refuses a key rather than write it to argv.
    assert {n: ENGINES[n]["api_key_env"] for n in ENGINES} == {
        "vllm": "VLLM_API_KEY", "sglang": None, "transformers": "AUTOGLM_SERVE_API_KEY"}
    assert engine_names("api_key_env") == ["transformers", "vllm"]


def test_vllm_argv_is_vllm_serve_with_its_json_flags():
    argv = engine_argv("vllm", SETTINGS, OPTIONS["vllm"])
    assert argv[:3] == ["/v/bin/vllm", "serve", "/m"] and argv[-1] == "--x"
    assert argv[argv.index("--mm-processor-kwargs") + 1] == '{"size":{"shortest_edge":12544,"longest_edge":100},"fps":1}'
    assert "--gpu-memory-utilization" not in argv
    argv = engine_argv("vllm", SETTINGS, dict(OPTIONS["vllm"], gpu_memory_utilization=0.8))
    assert argv[argv.index("--gpu-memory-utilization") + 1] == 0.8


def test_sglang_metrics_only_when_scraped_and_once():
    assert "--enable-metrics" not in engine_argv("sglang", SETTINGS, OPTIONS["sglang"])
    scraped = dict(SETTINGS, scraped=True)
    assert engine_argv("sglang", scraped, OPTIONS["sglang"])[-1] == "--enable-metrics"
    given = engine_argv("sglang", scraped, dict(OPTIONS["sglang"], extra_args=["--enable-metrics"]))
    assert given.count("--enable-metrics") == 1
    config = json.loads(given[given.index("--mm-process-config") + 1])
    assert config == {"image": {"size": {"shortest_edge": 12544, "longest_edge": 100}}}


def test_builtin_server_argv_and_its_path_option():
    argv = engine_argv("transformers", SETTINGS, OPTIONS["transformers"])
    assert argv[:3] == ["/v/bin/python", "-m", "autoglm_serve"] and "--threads" not in argv
    assert argv[argv.index("--limit-images-per-prompt") + 1] == 3
    assert engine_path_inputs("transformers", OPTIONS["transformers"], "inference_service_transformers_") == [
        {"var": "inference_service_transformers_server_dir", "kind": "path", "value": "/s"}]


def test_a_missing_option_is_named():
    with pytest.raises(AnsibleFilterError, match="mm_encoder_tp_mode"):
        engine_argv("vllm", SETTINGS, {"executable": "/v/bin/vllm", "mm_processor_cache_type": "shm"})


def test_contract_defaults_and_values():
    assert contract(None, "backend") == "vllm"
    assert contract("", "model_name") == "autoglm-phone-9b"
    assert contract(None, "weights_path", "tiny") == "/srv/models/tiny/current"
    assert contract(None, "weights_path") == "/srv/models/autoglm-phone-9b/current"
    assert contract("/data/venvs/x/current", "venv_path") == "/data/venvs/x/current"
    with pytest.raises(AnsibleFilterError, match="ending in /current"):
        contract("/data/models/x", "weights_path")
    with pytest.raises(AnsibleFilterError, match="unknown inference engine"):
        contract("tgi", "backend")
