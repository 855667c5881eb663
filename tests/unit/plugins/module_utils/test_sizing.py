"""The VRAM formula, checked against hand-computed numbers for AutoGLM-Phone-9B (GLM-4.1V-9B shape)."""
from __future__ import annotations

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _sizing

AUTOGLM = dict(params_billion=10.3, dtype="bfloat16", context_length=25480, num_layers=40, num_kv_heads=2,
               head_dim=128, tensor_parallel_size=1, overhead_gib=2.5, gpu_memory_utilization=0.9)


def test_autoglm_on_one_gpu_needs_more_than_a_24gb_card():
    need = _sizing.vram_per_gpu_gib(AUTOGLM)
    assert need["weights_gib"] == pytest.approx(10.3e9 * 2 / 2**30, abs=0.01)  # 19.19
    # 2 (K,V) * 40 layers * 2 heads * 128 dims * 2 bytes = 40960 bytes per token
    assert need["kv_cache_gib"] == pytest.approx(25480 * 40960 / 2**30, abs=0.01)  # 0.97
    assert need["per_gpu_gib"] == pytest.approx((19.19 + 0.97 + 2.5) / 0.9, abs=0.02)
    assert need["per_gpu_gib"] > 24564 / 1024  # an RTX 4090's 23.99 GiB


@pytest.mark.parametrize("tp, expected", [(1, 25.18), (2, 13.98), (4, 8.38)])
def test_tensor_parallel_splits_weights_and_kv(tp, expected):
    assert _sizing.vram_per_gpu_gib(dict(AUTOGLM, tensor_parallel_size=tp))["per_gpu_gib"] == pytest.approx(expected, abs=0.02)


def test_longer_context_needs_more_and_fp8_kv_halves_it():
    short = _sizing.vram_per_gpu_gib(dict(AUTOGLM, context_length=8192))
    fp8 = _sizing.vram_per_gpu_gib(dict(AUTOGLM, kv_cache_dtype="fp8"))
    assert short["per_gpu_gib"] < _sizing.vram_per_gpu_gib(AUTOGLM)["per_gpu_gib"]
    assert fp8["kv_cache_gib"] == pytest.approx(_sizing.vram_per_gpu_gib(AUTOGLM)["kv_cache_gib"] / 2, abs=0.01)
