"""Safetensors structure checks: files from the real safetensors library pass, hand-broken headers fail by name."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from ansible_collections.autoglm.deploy.plugins.module_utils import _safetensors


def raw_file(path, header: dict, data_len: int) -> str:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * data_len)
    return str(path)


def test_real_file_passes_with_every_tensor(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": np.zeros((3, 5), dtype=np.float16), "b": np.ones((7,), dtype=np.int64),
               "c": np.zeros((0,), dtype=np.float32)}, str(path), metadata={"format": "pt"})
    header = _safetensors.read_header(str(path))
    assert sorted(header) == ["a", "b", "c"]
    assert header["a"]["dtype"] == "F16" and header["a"]["shape"] == [3, 5]


@pytest.mark.parametrize("header, data_len, message", [
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "lie outside the 4-byte data buffer"),
    ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, 8, "span 8 bytes, F32 [2, 2] needs 16"),
    ({"t": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}}, 2, "unknown dtype 'Q9'"),
    ({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, 3, "end at byte 2 of a 3-byte data buffer"),
    ({"t": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, 3, "starts at 1, expected 0"),
    ({"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, 0, "not a list of non-negative integers"),
    ({"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, 2, "does not fill whole bytes"),
    ({"__metadata__": {"a": 1}}, 0, "__metadata__ must map strings to strings"),
])
def test_broken_headers_are_named(tmp_path, header, data_len, message):
    with pytest.raises(_safetensors.SafetensorsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _safetensors.read_header(raw_file(tmp_path / "bad.safetensors", header, data_len))


def test_header_length_and_json(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(_safetensors.SafetensorsError, match="shorter than the 8-byte header length"):
        _safetensors.read_header(str(short))
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(_safetensors.SafetensorsError, match="does not fit"):
        _safetensors.read_header(str(huge))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"{]{]")
    with pytest.raises(_safetensors.SafetensorsError, match="not valid JSON"):
        _safetensors.read_header(str(garbage))


def test_index_checks_shards_and_tensor_names(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors",
                                                "d": "s3.safetensors"}}))
    headers = {"s1.safetensors": {"a": {}}, "s3.safetensors": _safetensors.SafetensorsError("broken")}
    assert _safetensors.check_index(str(index), headers) == [
        ("s1.safetensors", "1 tensor(s) the index puts in this shard are not in its header: b"),
        ("s2.safetensors", "listed in the index's weight_map but does not exist"),
    ]
    index.write_text("[]")
    assert _safetensors.check_index(str(index), headers) == [("", "index has no weight_map of tensor name -> shard file")]
