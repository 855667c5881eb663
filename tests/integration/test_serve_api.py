"""The built-in server's OpenAI-shaped API, over real HTTP on loopback, against a real subprocess and the tiny model."""
from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.serve import ServeProcess, metric, post_json, request, stream_events
from support.testmodel import tiny_model

PROMPTS = [
    "Open the settings app and turn on airplane mode.",
    "Tap the search bar, type weather in Beijing, then press enter.",
    "Scroll down until the checkout button is visible.",
    "你好, 请帮我打开微信并发送一条消息。",
    "def main():",
    "0 1 2 3 4 5",
    "Launch the camera, switch to video and start recording.",
    "The model reads the screen.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with ServeProcess(model_dir, log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        srv.wait_healthy()
        yield srv


def chat(server, content, **extra):
    return post_json(server.base + "/v1/chat/completions",
                     dict({"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0}, **extra))


def test_models_lists_the_served_name(server):
    status, _unused, body = request("GET", server.base + "/v1/models")
    data = json.loads(body)
    assert status == 200 and data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["tiny"]


def test_chat_completion_returns_text_and_usage(server):
    status, body = chat(server, PROMPTS[0], max_tokens=12)
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_bounds_the_answer_and_says_length(server):
    status, body = chat(server, PROMPTS[1], max_tokens=3)
    assert status == 200
    assert body["usage"]["completion_tokens"] <= 3
    if body["usage"]["completion_tokens"] == 3:
        assert body["choices"][0]["finish_reason"] == "length"


def test_streaming_sends_the_same_text_as_sse_chunks_then_done(server):
    _unused, plain = chat(server, PROMPTS[2], max_tokens=16)
    status, ctype, events = stream_events(server.base + "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": PROMPTS[2]}], "temperature": 0, "max_tokens": 16,
        "stream_options": {"include_usage": True}})
    assert status == 200 and ctype.startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_sequence_cuts_the_answer_before_it(server, stream):
    _unused, full = chat(server, PROMPTS[3], max_tokens=24)
    text = full["choices"][0]["message"]["content"]
    assert len(text) >= 4, "the tiny model should say something to cut: %r" % text
    # Stop on a piece from the middle: the answer is what precedes its first occurrence.
    stop = text[2:4]
    expected = text[:text.index(stop)]
    if stream:
        _unused, _unused, events = stream_events(server.base + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": PROMPTS[3]}], "temperature": 0, "max_tokens": 24, "stop": [stop]})
        got = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        reason = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1]
    else:
        _unused, body = chat(server, PROMPTS[3], max_tokens=24, stop=stop)
        got, reason = body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]
    assert got == expected and reason == "stop"


IMAGE = [{"type": "text", "text": "what is on screen?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
# A text model reads no image from anywhere: the part is refused before its url is looked at.
IMAGE_FILE = [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]
IMAGE_HTTP = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/screen.png"}}]


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    (b"{not json", 400, None, "invalid_json"),
    ({"model": "tiny"}, 400, "messages", None),
    ({"model": "tiny", "messages": []}, 400, "messages", None),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
    ({"model": "tiny", "messages": [{"role": "user", "content": IMAGE}]}, 400, "messages[0].content[1]", "unsupported_content_type"),
    ({"model": "tiny", "messages": [{"role": "user", "content": IMAGE_FILE}]}, 400, "messages[0].content[0]",
     "unsupported_content_type"),
    ({"model": "tiny", "messages": [{"role": "user", "content": IMAGE_HTTP}]}, 400, "messages[0].content[0]",
     "unsupported_content_type"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}, 400, "temperature", None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens",
     "context_length_exceeded"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n", None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": 5}, 400, "stop", None),
], ids=["bad-json", "no-messages", "empty-messages", "other-model", "image-part", "image-file", "image-http", "bad-role", "temperature",
        "zero-max-tokens", "over-context", "n", "stop-type"])
def test_requests_it_cannot_serve_get_an_openai_error(server, body, status, param, code):
    got, answer = post_json(server.base + "/v1/chat/completions", body)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param and error["code"] == code


def test_unknown_path_and_wrong_method_are_refused(server):
    assert request("GET", server.base + "/v1/completions")[0] == 404
    status, _unused, body = request("GET", server.base + "/v1/chat/completions")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


def test_metrics_count_requests_tokens_and_model_load(server):
    ok = {"endpoint": "/v1/chat/completions", "status": "200"}
    bad = {"endpoint": "/v1/chat/completions", "status": "404"}
    before = (metric(server, "autoglm_serve_requests_total", **ok), metric(server, "autoglm_serve_requests_total", **bad),
              metric(server, "autoglm_serve_generation_tokens_total"),
              metric(server, "autoglm_serve_request_duration_seconds_count", endpoint="/v1/chat/completions"))
    _unused, body = chat(server, PROMPTS[4], max_tokens=5)
    chat(server, PROMPTS[4], model="other")
    after = (metric(server, "autoglm_serve_requests_total", **ok), metric(server, "autoglm_serve_requests_total", **bad),
             metric(server, "autoglm_serve_generation_tokens_total"),
             metric(server, "autoglm_serve_request_duration_seconds_count", endpoint="/v1/chat/completions"))
    assert after[0] - before[0] == 1 and after[1] - before[1] == 1
    assert after[2] - before[2] == body["usage"]["completion_tokens"]
    assert after[3] - before[3] == 2
    text = request("GET", server.base + "/metrics")[2].decode()
    assert "# TYPE autoglm_serve_request_duration_seconds histogram" in text
    assert re.search(r'^autoglm_serve_request_duration_seconds_bucket\{endpoint="/v1/chat/completions",le="\+Inf"\} \d+$', text, re.M)
    assert metric(server, "autoglm_serve_model_loaded") == 1 and metric(server, "autoglm_serve_model_load_seconds") > 0
    # No GPU here: no GPU memory series, only their declarations.
    assert "autoglm_serve_gpu_memory_allocated_bytes{" not in text


def direct_generate(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """What transformers' generate says for each prompt, greedy, without the server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return answers


def test_concurrent_requests_each_get_their_own_answer(server, model_dir):
    expected = direct_generate(model_dir, PROMPTS, 20)
    assert len(set(expected)) > 1, "prompts should give different answers, or the test proves nothing"

    def ask(i: int):
        if i % 2:
            _unused, _unused, events = stream_events(server.base + "/v1/chat/completions", {
                "messages": [{"role": "user", "content": PROMPTS[i]}], "temperature": 0, "max_tokens": 20})
            return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        return chat(server, PROMPTS[i], max_tokens=20)[1]["choices"][0]["message"]["content"]

    batches = metric(server, "autoglm_serve_batches_total")
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        got = list(pool.map(ask, range(len(PROMPTS))))
    assert got == expected
    # They shared batches (the first runs alone while the rest arrive), or this proved only the queue.
    assert metric(server, "autoglm_serve_batches_total") - batches < len(PROMPTS)


def test_one_batch_keeps_each_requests_budget_and_stop(server, model_dir):
    """Rows of one batch end on their own: max_tokens 4..18 and a stop sequence for every other request."""
    budgets = [4 + 2 * i for i in range(len(PROMPTS))]
    solo = [direct_generate(model_dir, [prompt], budget)[0] for prompt, budget in zip(PROMPTS, budgets)]
    stops = [text[1:3] if i % 2 and len(text) > 3 else None for i, text in enumerate(solo)]
    expected = [text[:text.index(stop)] if stop else text for text, stop in zip(solo, stops)]

    def ask(i: int):
        extra = {"max_tokens": budgets[i]}
        if stops[i]:
            extra["stop"] = [stops[i]]
        body = chat(server, PROMPTS[i], **extra)[1]
        return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        got = list(pool.map(ask, range(len(PROMPTS))))
    assert [text for text, _unused in got] == expected
    assert all(tokens <= budget for (_unused, tokens), budget in zip(got, budgets))


def test_frequency_and_presence_penalties_change_a_repetitive_greedy_answer(server):
    """The phone agent sends frequency_penalty 0.2; the tiny model's greedy answer repeats tokens, so a strong
    penalty must change it (OpenAI's semantics over the generated tokens, as vLLM applies them)."""
    plain = chat(server, PROMPTS[0], max_tokens=16)[1]["choices"][0]["message"]["content"]
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        status, body = chat(server, PROMPTS[0], max_tokens=16, **penalty)
        assert status == 200 and body["choices"][0]["message"]["content"] != plain, (penalty, plain)
    assert chat(server, PROMPTS[0], max_tokens=16, frequency_penalty=0.0)[1]["choices"][0]["message"]["content"] == plain
    status, body = chat(server, PROMPTS[0], frequency_penalty=2.5)
    assert status == 400 and body["error"]["param"] == "frequency_penalty"
