"""The test model builder: a real, loadable causal LM, byte-identical per seed; the synthetic snapshot mode."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.testmodel import load_builder, tiny_model


def digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


def test_tiny_model_has_sharded_weights_index_tokenizer_and_chat_template(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) >= 3
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert "<|im_start|>" in json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    total = sum((model_dir / n).stat().st_size for n in names)
    assert 1 << 20 < total < 16 << 20  # a few MB


def test_same_seed_gives_identical_bytes_and_another_seed_other_weights(model_dir, tmp_path):
    builder = load_builder()
    builder.build_tiny_model(tmp_path / "again", seed=0)
    assert digests(tmp_path / "again") == digests(model_dir)
    builder.build_tiny_model(tmp_path / "other", seed=1)
    other = digests(tmp_path / "other")
    assert other["model-00001-of-00003.safetensors"] != digests(model_dir)["model-00001-of-00003.safetensors"]
    assert other["tokenizer.json"] == digests(model_dir)["tokenizer.json"]


def test_transformers_loads_it_and_generates_on_cpu(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Open the settings app"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape[1] == ids.shape[1] + 5
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 4


def test_synthetic_snapshot_has_the_requested_shard_sizes_and_distinct_content(tmp_path):
    files = load_builder().build_synthetic_snapshot(tmp_path, shards=2, shard_size=(3 << 20) + 5)
    shards = [tmp_path / n for n in files if n.endswith(".safetensors")]
    assert [p.stat().st_size for p in shards] == [(3 << 20) + 5] * 2
    first, second = (p.read_bytes() for p in shards)
    assert first != second and first[: 1 << 20] != first[1 << 20: 2 << 20]
    assert (tmp_path / "config.json").is_file()
