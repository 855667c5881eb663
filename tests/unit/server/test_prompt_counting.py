"""How the built-in server counts a long prompt before tokenizing it whole (a real tokenizer: the tiny test model's)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "server"))
from autoglm_serve.engine import COUNT_CHUNK, Engine, PromptTooLong
from support.testmodel import tiny_model

TEXTS = {
    "words": "Open the settings app and turn on airplane mode. " * 2000,
    "no-spaces": "abcdefghij" * 10000,
    "cjk-and-emoji": "你好, 请帮我打开微信并发送一条消息。😀 " * 2000,
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from transformers import AutoTokenizer

    engine = Engine(str(tiny_model(tmp_path_factory)))
    engine.tokenizer = AutoTokenizer.from_pretrained(engine.model_path, local_files_only=True)
    return engine


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_the_piecewise_count_is_within_a_token_per_piece_of_the_whole(engine, name):
    text = TEXTS[name]
    whole = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    pieces = len(text) // (COUNT_CHUNK // 2) + 1
    assert abs(engine._count_tokens(text, stop_over=10 ** 9) - whole) <= pieces


def test_counting_stops_soon_after_the_limit(engine):
    text = "word " * 2_000_000  # 10 MB
    assert engine._count_tokens(text, stop_over=1000) < 1000 + COUNT_CHUNK


def test_a_prompt_far_over_the_limit_is_refused_and_one_near_it_is_tokenized(engine):
    messages = [{"role": "user", "content": "word " * 5000}]
    whole = len(engine.render_prompt(messages))
    with pytest.raises(PromptTooLong) as raised:
        engine.render_prompt(messages, limit=whole // 4)
    assert raised.value.at_least > whole // 2
    # Just over the limit is not "far over": tokenized whole, so the caller can name the exact count.
    assert len(engine.render_prompt(messages, limit=whole - 1)) == whole
