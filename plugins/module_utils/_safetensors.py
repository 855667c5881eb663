# SPDX-License-Identifier: Apache-2.0
"""Structural checks of safetensors files and their index, without loading any tensor.

A safetensors file is: 8 bytes little-endian u64 N, N bytes of JSON header, then the data
buffer. The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}
(offsets relative to the data buffer) plus an optional "__metadata__" of strings. A sound
file's tensors each span exactly dtype size * prod(shape) bytes and together cover the buffer
to its end, which is how the safetensors library itself judges a file.

A sharded model's `*.safetensors.index.json` maps each tensor name to its shard
("weight_map"); every shard must exist and hold every tensor the index sends to it.
Standard library only: this runs on target nodes.
"""
from __future__ import annotations

import json
import os
import struct

MAX_HEADER = 100 * 1000 * 1000  # the safetensors library refuses larger headers too
INDEX_SUFFIX = ".safetensors.index.json"
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}


class SafetensorsError(ValueError):
    """The file or index is not structurally sound; the message says where."""


def read_header(path: str) -> dict:
    """Parse and check the header of one file; returns {tensor name: info} (no __metadata__)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise SafetensorsError("file is %d bytes, shorter than the 8-byte header length" % size)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise SafetensorsError("header length %d does not fit in a %d-byte file" % (header_len, size))
            raw = handle.read(header_len)
    except OSError as exc:
        raise SafetensorsError("cannot read: %s" % (exc.strerror or exc)) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError("header is not valid JSON: %s" % exc) from exc
    if not isinstance(header, dict):
        raise SafetensorsError("header is JSON but not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(value, str) for value in metadata.values())):
        raise SafetensorsError("__metadata__ must map strings to strings")
    check_tensors(header, size - 8 - header_len)
    return header


def _tensor_bytes(name: str, info) -> tuple:
    if not isinstance(info, dict):
        raise SafetensorsError("tensor %r: entry is not an object" % name)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise SafetensorsError("tensor %r: unknown dtype %r" % (name, dtype))
    if not isinstance(shape, list) or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0
                                              for dim in shape):
        raise SafetensorsError("tensor %r: shape %r is not a list of non-negative integers" % (name, shape))
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(value, int) and not isinstance(value, bool) for value in offsets)):
        raise SafetensorsError("tensor %r: data_offsets %r is not [begin, end]" % (name, offsets))
    count = 1
    for dim in shape:
        count *= dim
    bits = count * DTYPE_BITS[dtype]
    if bits % 8:
        raise SafetensorsError("tensor %r: %d x %s does not fill whole bytes" % (name, count, dtype))
    return offsets[0], offsets[1], bits // 8


def check_tensors(header: dict, data_len: int) -> None:
    """Every tensor inside the data buffer, sized dtype*shape, and the buffer covered without holes."""
    spans = []
    for name, info in header.items():
        begin, end, expected = _tensor_bytes(name, info)
        if not 0 <= begin <= end <= data_len:
            raise SafetensorsError("tensor %r: data_offsets [%d, %d] lie outside the %d-byte data buffer"
                                   % (name, begin, end, data_len))
        if end - begin != expected:
            raise SafetensorsError("tensor %r: data_offsets span %d bytes, %s %r needs %d"
                                   % (name, end - begin, info["dtype"], info["shape"], expected))
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise SafetensorsError("tensor %r starts at %d, expected %d (overlap or hole in the data buffer)"
                                   % (name, begin, position))
        position = end
    if position != data_len:
        raise SafetensorsError("tensors end at byte %d of a %d-byte data buffer (truncated or trailing bytes)"
                               % (position, data_len))


def check_index(index_path: str, headers: dict) -> list:
    """Problems of one index file, as (path relative to the index's dir, message) pairs.

    `headers` maps a shard path (relative to the index's directory) to its parsed header, or to a
    SafetensorsError when the shard itself is broken (then its tensors are not checked again).
    Problems of the index itself (unreadable, no weight_map) carry the path "".
    """
    try:
        with open(index_path, "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [("", "cannot read the index: %s" % exc)]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(value, str) for value in weight_map.values()):
        return [("", "index has no weight_map of tensor name -> shard file")]
    problems = []
    wanted = {}
    for tensor, shard in weight_map.items():
        wanted.setdefault(shard, []).append(tensor)
    for shard in sorted(wanted):
        header = headers.get(shard)
        if header is None:
            problems.append((shard, "listed in the index's weight_map but does not exist"))
        elif isinstance(header, dict):
            absent = sorted(name for name in wanted[shard] if name not in header)
            if absent:
                problems.append((shard, "%d tensor(s) the index puts in this shard are not in its header: %s"
                                 % (len(absent), ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))))
    return problems
