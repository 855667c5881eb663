# SPDX-License-Identifier: Apache-2.0
"""Filter openai_stream: one chat completion from a streamed (server-sent events) OpenAI response body."""
from __future__ import annotations

import json

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: openai_stream
short_description: The answer, usage and finish reason of a streamed OpenAI chat completion
version_added: "0.1.0"
description:
  - >-
    Reads the body of a C(stream=true) C(/v1/chat/completions) response (C(data:) lines of JSON chunks, then
    C(data: [DONE])), as vLLM, SGLang and the built-in server send it, and joins the deltas of choice 0.
  - An error sent inside the stream (a chunk with an C(error) object) is returned, not raised, so the caller
    can show it beside the node's journal.
options:
  _input:
    description: The response body (the C(content) that M(ansible.builtin.uri) returns with C(return_content)).
    type: str
    required: true
"""

EXAMPLES = r"""
answer: "{{ (response.content | autoglm.deploy.openai_stream).content }}"
"""

RETURN = r"""
_value:
  description: >-
    C(content) (the joined text), C(usage) (the last usage object sent, with C(stream_options.include_usage);
    null when none came), C(finish_reason), C(chunks) (how many JSON chunks), C(done) (whether C([DONE]) came)
    and C(error) (the first error object, or null).
  type: dict
"""


def openai_stream(body) -> dict:
    if not isinstance(body, str):
        raise AnsibleFilterError("openai_stream expects the response body as a string, got %s" % type(body).__name__)
    result = {"content": "", "usage": None, "finish_reason": None, "chunks": 0, "done": False, "error": None}
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue  # comments, event: lines and the blank lines between events
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            result["done"] = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            raise AnsibleFilterError("openai_stream: a data line is not JSON: %r" % data[:200]) from None
        if not isinstance(chunk, dict):
            raise AnsibleFilterError("openai_stream: a chunk is not a JSON object: %r" % data[:200])
        result["chunks"] += 1
        if chunk.get("error") and result["error"] is None:
            result["error"] = chunk["error"]
        if chunk.get("usage"):
            result["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            result["content"] += (choice.get("delta") or {}).get("content") or ""
            result["finish_reason"] = choice.get("finish_reason") or result["finish_reason"]
    return result


class FilterModule:
    def filters(self):
        return {"openai_stream": openai_stream}
