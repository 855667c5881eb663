"""openai_stream joins a streamed chat completion the way the smoke test reads vLLM's, SGLang's and the built-in server's."""
from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.autoglm.deploy.plugins.filter.openai import openai_stream


def sse(*chunks) -> str:
    return "".join("data: %s\n\n" % (c if isinstance(c, str) else json.dumps(c)) for c in chunks)


def delta(text, finish=None, index=0):
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]}


def test_deltas_usage_and_finish_reason_are_joined():
    body = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, delta('do(action="Launch", '),
               delta("other", index=1), delta('app="Settings")', "stop"),
               {"choices": [], "usage": {"prompt_tokens": 190, "completion_tokens": 9}}, "[DONE]")
    got = openai_stream(": keep-alive\n" + body)
    assert got == {"content": 'do(action="Launch", app="Settings")', "usage": {"prompt_tokens": 190, "completion_tokens": 9},
                   "finish_reason": "stop", "chunks": 5, "done": True, "error": None}


def test_an_error_inside_the_stream_is_returned_and_a_cut_stream_shows():
    got = openai_stream(sse(delta("do("), {"error": {"message": "engine died", "code": 500}}))
    assert got["error"] == {"message": "engine died", "code": 500} and got["content"] == "do(" and not got["done"]


@pytest.mark.parametrize("body, message", [
    ("data: {not json\n\n", "a data line is not JSON"),
    ("data: [1, 2]\n\n", "a chunk is not a JSON object"),
    (None, "expects the response body as a string"),
])
def test_bodies_that_are_not_a_stream_are_refused(body, message):
    with pytest.raises(AnsibleFilterError, match=message):
        openai_stream(body)
