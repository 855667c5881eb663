"""The test model builder: a real, loadable causal LM, byte-identical per seed; the tiny trained GLM-4.1V
(glm4v mode) and its screenshot; the synthetic snapshot mode."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.testmodel import BUILDER, glm4v_model, load_builder, tiny_model


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


# --- glm4v: the tiny trained GLM-4.1V --------------------------------------------------------------

@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory) -> Path:
    return glm4v_model(tmp_path_factory)


@pytest.fixture(scope="module")
def builder():
    return load_builder()


def test_glm4v_has_glm41v_files_and_consistent_token_ids(glm_dir, builder):
    names = sorted(p.name for p in glm_dir.iterdir())
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors.index.json"} <= set(names)
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) >= 2
    assert sorted(set(json.loads((glm_dir / "model.safetensors.index.json").read_text())["weight_map"].values())) == shards
    config = json.loads((glm_dir / "config.json").read_text())
    assert config["model_type"] == "glm4v" and config["architectures"] == ["Glm4vForConditionalGeneration"]
    text, vision = config["text_config"], config["vision_config"]
    assert (text["num_hidden_layers"], text["hidden_size"], vision["depth"], vision["hidden_size"]) == (2, 128, 2, 64)
    assert (vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"]) == (14, 2, 2)
    rotary = text["hidden_size"] // text["num_attention_heads"] * text["rope_parameters"]["partial_rotary_factor"]
    assert sum(text["rope_parameters"]["mrope_section"]) == rotary // 2 == sum(text["rope_scaling"]["mrope_section"])
    # GLM's special tokens, in the real order, right after the BPE vocabulary.
    added = json.loads((glm_dir / "tokenizer.json").read_text())["added_tokens"]
    assert [t["content"] for t in added] == builder.GLM_SPECIAL_TOKENS and all(t["special"] for t in added)
    ids = {t["content"]: t["id"] for t in added}
    assert [t["id"] for t in added] == list(range(added[0]["id"], added[0]["id"] + len(added)))
    assert (config["image_token_id"], config["video_token_id"]) == (ids["<|image|>"], ids["<|video|>"])
    assert (config["image_start_token_id"], config["image_end_token_id"]) == (ids["<|begin_of_image|>"], ids["<|end_of_image|>"])
    assert (config["video_start_token_id"], config["video_end_token_id"]) == (ids["<|begin_of_video|>"], ids["<|end_of_video|>"])
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    assert config["eos_token_id"] == text["eos_token_id"] == eos
    assert json.loads((glm_dir / "generation_config.json").read_text())["eos_token_id"] == eos
    assert text["vocab_size"] > max(ids.values())
    pre = json.loads((glm_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Glm4vImageProcessor" and set(pre["size"]) == {"shortest_edge", "longest_edge"}


def test_glm4v_same_seed_gives_identical_bytes(glm_dir, builder, tmp_path):
    files = builder.build_tiny_glm4v(tmp_path / "again", seed=0)
    assert sorted(p.name for p in glm_dir.iterdir()) == files
    assert digests(tmp_path / "again") == digests(glm_dir)


def test_screenshot_is_a_deterministic_phone_shaped_png(builder, tmp_path):
    png = builder.lab_screenshot_png()
    assert png == builder.lab_screenshot_png() and png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (depth, colour) == (8, 2) and width % 28 == 0 and height % 28 == 0 and 2 * width < height * 1.2
    raw = zlib.decompress(png[png.index(b"IDAT") + 4:-16])
    assert len(raw) == height * (1 + 3 * width)
    row = 1 + 3 * width
    pixels = {raw[y * row + 1 + 3 * x:y * row + 4 + 3 * x] for y in range(0, height, 7) for x in range(0, width, 7)}
    assert len(pixels) > 20  # bands and icons, not a blank frame
    out = tmp_path / "shot.png"
    subprocess.run([sys.executable, str(BUILDER), "screenshot", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == png


def _greedy(glm_dir, builder, content, dtype, system=None):
    import torch
    from transformers import AutoProcessor, Glm4vForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(glm_dir))
    model = Glm4vForConditionalGeneration.from_pretrained(str(glm_dir), dtype=dtype)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=32)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return processor.decode(new, skip_special_tokens=True), new[-1], inputs["input_ids"][0].tolist()


def _image(builder):
    from PIL import Image

    # A PIL image, not a data: URL: transformers decodes URLs with torchvision.io, which the CPU
    # repack of torchvision in the tool venv lacks.
    return Image.open(io.BytesIO(builder.lab_screenshot_png()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["image-first", "text-first", "string-placeholder-first"])
def test_glm4v_transformers_answers_the_lab_action_and_stops(glm_dir, builder, layout, dtype):
    import torch

    image = {"type": "image", "image": _image(builder)}
    text = {"type": "text", "text": builder.LAB_INSTRUCTION}
    content = {"image-first": [image, text], "text-first": [text, image],
               # what vLLM's "string" content format renders: placeholder, newline, text
               "string-placeholder-first": [image, {"type": "text", "text": "\n" + builder.LAB_INSTRUCTION}]}[layout]
    config = json.loads((glm_dir / "config.json").read_text())
    for system in (None, "You are a phone agent. Answer with one action."):
        answer, last, prompt = _greedy(glm_dir, builder, content, getattr(torch, dtype), system)
        assert answer == builder.LAB_ACTION
        assert last in config["eos_token_id"]  # it stopped on an eos, not on max_new_tokens
        # one <|image|> per 2x2 merged 14-pixel patches, between <|begin_of_image|> and <|end_of_image|>
        n_image = builder.SCREEN_W // 28 * (builder.SCREEN_H // 28)
        start = prompt.index(config["image_start_token_id"])
        assert prompt[start + 1:start + 2 + n_image] == [config["image_token_id"]] * n_image + [config["image_end_token_id"]]


def test_glm4v_without_the_screenshot_answers_something_else(glm_dir, builder):
    import torch

    answer, _unused, _unused = _greedy(glm_dir, builder, builder.LAB_INSTRUCTION, torch.float32)
    assert answer != builder.LAB_ACTION and answer == builder.NO_SCREEN_ACTION
    answer, _unused, _unused = _greedy(glm_dir, builder, [{"type": "text", "text": builder.LAB_INSTRUCTION}], torch.float32)
    assert answer != builder.LAB_ACTION
