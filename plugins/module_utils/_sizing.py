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
