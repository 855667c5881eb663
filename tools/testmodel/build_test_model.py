#!/usr/bin/env python3
"""Build the models the tests and benchmarks serve from the mirror; nothing here is committed as a binary.

Two modes:

``tiny``   a real but tiny transformers causal LM (Qwen2 architecture, 4 layers, hidden size 128, random
           weights from a fixed seed) saved as >= 3 safetensors shards plus ``model.safetensors.index.json``,
           a byte-level BPE tokenizer trained here with ``tokenizers`` (``tokenizer.json`` +
           ``tokenizer_config.json`` with a chat template), ``config.json`` and ``generation_config.json``.
           The same seed gives byte-identical files; ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it
           and ``generate`` runs on CPU. Needs torch, transformers, tokenizers, safetensors (the tool venv).

``synthetic``  a large snapshot for benchmarks: N weight shards of a given size filled from a fast PRNG
           (written once, never hashed here), a small config and an index. Standard library only.

    python3 tools/testmodel/build_test_model.py tiny OUT_DIR [--seed 0]
    python3 tools/testmodel/build_test_model.py synthetic OUT_DIR --shards 4 --shard-size 512M

As a library: ``build_tiny_model(out_dir, seed=0) -> list of file names``,
``build_synthetic_snapshot(out_dir, shards, shard_size, seed=0)``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    tiny = sub.add_parser("tiny", help="tiny real Qwen2 causal LM")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    synth = sub.add_parser("synthetic", help="large synthetic snapshot for benchmarks")
    synth.add_argument("out")
    synth.add_argument("--shards", type=int, default=4)
    synth.add_argument("--shard-size", type=parse_size, default=parse_size("512M"), help="e.g. 512M, 2G")
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "tiny":
        files = build_tiny_model(args.out, seed=args.seed)
    else:
        files = build_synthetic_snapshot(args.out, args.shards, args.shard_size, seed=args.seed)
    for name in files:
        print(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
