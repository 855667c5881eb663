# SPDX-License-Identifier: Apache-2.0
"""How much GPU memory, disk and RAM a model needs: one formula shared by preflight and the docs.

VRAM per GPU = (weights / tp + KV cache for one full-length sequence / tp + runtime overhead)
               / the fraction of VRAM the engine may use (vLLM's --gpu-memory-utilization).
The KV term is why a 24 GB card that holds AutoGLM-Phone-9B's weights still fails at 25k context.
"""
from __future__ import annotations

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def weights_gib(params_billion: float, dtype: str) -> float:
    return params_billion * 1e9 * DTYPE_BYTES[dtype] / GIB


def kv_cache_gib(context_length: int, num_layers: int, num_kv_heads: int, head_dim: int, kv_dtype: str) -> float:
    # K and V, per layer, per KV head, per token.
    per_token = 2 * num_layers * num_kv_heads * head_dim * DTYPE_BYTES[kv_dtype]
    return context_length * per_token / GIB


def vram_per_gpu_gib(model: dict) -> dict:
    """Break down the per-GPU need; `model` carries the preflight role's model_* settings."""
    tp = max(1, int(model["tensor_parallel_size"]))
    weights = weights_gib(model["params_billion"], model["dtype"])
    kv_dtype = model.get("kv_cache_dtype") or "auto"
    kv_dtype = model["dtype"] if kv_dtype == "auto" else kv_dtype
    kv = kv_cache_gib(model["context_length"], model["num_layers"], model["num_kv_heads"],
                      model["head_dim"], kv_dtype)
    used = weights / tp + kv / tp + model["overhead_gib"]
    return {
        "weights_gib": round(weights, 2),
        "kv_cache_gib": round(kv, 2),
        "per_gpu_gib": round(used / model["gpu_memory_utilization"], 2),
        "tensor_parallel_size": tp,
    }


# The model preflight sizes when the inventory describes none: AutoGLM-Phone-9B (GLM-4.1V-9B shape) in BF16 at
# upstream's context, with the runtime overhead per GPU (roles/preflight/defaults/main.yml says the same; a unit
# test keeps the two equal).
MODEL_DEFAULTS = {"params_billion": 10.3, "dtype": "bfloat16", "kv_cache_dtype": "auto", "context_length": 25480,
                  "num_layers": 40, "num_kv_heads": 2, "head_dim": 128, "overhead_gib": 2.5,
                  "gpu_memory_utilization": 0.9}


def _mig_gib(profile: str) -> float | None:
    """A MIG profile's memory ("3g.40gb": 40 GB, in GiB); None when the profile does not say."""
    size = profile.rsplit(".", 1)[-1].lower()
    return float(size[:-2]) * 1e9 / GIB if size.endswith("gb") and size[:-2].replace(".", "", 1).isdigit() else None


def gpu_slots(gpu_facts: dict) -> list:
    """The devices a replica can be given, as gpu_facts reports them: every MIG instance of a GPU in MIG mode (a
    process sees one MIG instance at most, so each runs a replica of its own at TP 1), every other GPU whole.
    [{uuid, memory_gib, mig}], in nvidia-smi's order; [] without usable GPUs."""
    if not (gpu_facts or {}).get("usable"):
        return []
    slots = []
    for gpu in gpu_facts.get("gpus") or []:
        migs = gpu.get("mig_devices") or []
        if migs:
            slots += [{"uuid": mig["uuid"], "memory_gib": _mig_gib(mig.get("profile", "")) or 0.0, "mig": True}
                      for mig in migs]
        else:
            slots.append({"uuid": gpu["uuid"], "memory_gib": (gpu.get("memory_total_mib") or 0) / 1024, "mig": False})
    return slots


class LayoutError(ValueError):
    pass


def replica_layout(gpu_facts: dict, model: dict, tensor_parallel_size=None, replicas=None) -> dict:
    """How a node's GPUs split into replicas: {tensor_parallel_size, gpus: [[uuid, ...] per replica], fits}.

    Unset, the tensor-parallel size is the smallest power of two whose share of the model (vram_per_gpu_gib)
    fits every GPU of a group, and the node runs as many replicas as it has such groups; MIG instances run at
    TP 1, each one the model fits in a replica of its own. A node without usable GPUs runs one replica (its TP is
    then the engine's ranks, e.g. vLLM-CPU's). `replicas` asks for fewer (GPUs left idle), never more than fit;
    `fits` is False when the model fits no group (preflight's VRAM check says by how much): the node then runs
    one replica over every whole GPU, as before replicas existed."""
    wanted = int(replicas) if replicas not in (None, "", 0, "0") else None
    tp = int(tensor_parallel_size) if tensor_parallel_size not in (None, "", 0, "0") else None
    if (tp is not None and tp < 1) or (wanted is not None and wanted < 1):
        raise LayoutError("tensor_parallel_size and replicas must be at least 1 (or unset for the sizing's own)")
    slots = gpu_slots(gpu_facts)
    if not slots:
        return {"tensor_parallel_size": tp or 1, "gpus": [[] for _replica in range(wanted or 1)], "fits": True}

    whole = [slot for slot in slots if not slot["mig"]]

    def need(size):
        return vram_per_gpu_gib(dict(model, tensor_parallel_size=size))["per_gpu_gib"]

    def groups(size):
        found = [whole[i:i + size] for i in range(0, len(whole) - size + 1, size)]
        return found + ([[slot] for slot in slots if slot["mig"]] if size == 1 else [])

    def holds(group, size):
        return all(slot["memory_gib"] >= need(size) for slot in group)

    if tp:
        # The operator's size: every group of it serves, whether or not the sizing thinks the model fits.
        size, fitting = tp, groups(tp)
        fits = bool(fitting) and all(holds(group, tp) for group in fitting)
    else:
        for size in [size for size in (1, 2, 4, 8, 16, 32, 64) if size == 1 or size <= len(whole)]:
            fitting = [group for group in groups(size) if holds(group, size)]
            if fitting:
                break
        fits = bool(fitting)
    if not fitting:
        size = tp or max(len(whole), 1)
        return {"tensor_parallel_size": size, "gpus": [[slot["uuid"] for slot in (whole[:size] or slots[:1])]],
                "fits": False}
    if wanted is not None and wanted > len(fitting):
        raise LayoutError("%d replicas at tensor parallel %d asked, but this node has %d GPU group(s) that hold the "
                          "model (%.1f GiB per GPU); ask for at most %d, or another tensor parallel size"
                          % (wanted, size, len(fitting), need(size), len(fitting)))
    return {"tensor_parallel_size": size, "gpus": [[slot["uuid"] for slot in group] for group in fitting[:wanted]],
            "fits": fits}
