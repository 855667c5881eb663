"""Streaming hashes against independent references: hashlib over whole bytes, and the real `git hash-object`."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing

GIT = shutil.which("git")
# Sizes around the chunk boundary catch off-by-one reads; 0 catches the empty-file header.
SIZES = [0, 1, 4095, _hashing.CHUNK_SIZE - 1, _hashing.CHUNK_SIZE, _hashing.CHUNK_SIZE + 1, 2 * _hashing.CHUNK_SIZE + 7]


def git_hash_object(path) -> str:
    assert GIT, "the git binary is needed to compare blob ids"
    return subprocess.run([GIT, "hash-object", "--no-filters", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("size", SIZES)
def test_one_read_gives_both_hashes_equal_to_references(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    result = _hashing.hash_file(str(path), _hashing.ALGORITHMS)
    assert result["size"] == size
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["git_sha1"] == git_hash_object(path)
    assert _hashing.git_blob_sha1_bytes(data) == result["git_sha1"]


def test_text_file_blob_id_matches_git(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"architectures": ["Glm4vForConditionalGeneration"]}\n')
    assert _hashing.git_blob_sha1_file(str(path)) == git_hash_object(path)
    assert _hashing.sha256_file(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_incremental_hasher_fed_in_odd_pieces(tmp_path):
    data = os.urandom(100_003)
    hasher = _hashing.IncrementalHasher(_hashing.ALGORITHMS, size=len(data))
    for start in range(0, len(data), 777):
        hasher.update(memoryview(data)[start:start + 777])
    assert hasher.hexdigests() == {"sha256": hashlib.sha256(data).hexdigest(),
                                   "git_sha1": _hashing.git_blob_sha1_bytes(data)}


def test_incremental_hasher_refuses_a_short_feed():
    hasher = _hashing.IncrementalHasher((_hashing.GIT_SHA1,), size=10)
    hasher.update(b"12345")
    with pytest.raises(_hashing.HashError, match="expected 10 bytes, got 5"):
        hasher.hexdigests()


def test_git_sha1_needs_the_size_and_names_are_checked():
    with pytest.raises(ValueError, match="size up front"):
        _hashing.IncrementalHasher((_hashing.GIT_SHA1,))
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        _hashing.IncrementalHasher(("md5",))


def test_hash_files_in_parallel_matches_serial_and_reports_unreadable(tmp_path):
    wanted = {}
    for index in range(9):
        path = tmp_path / ("f%d" % index)
        path.write_bytes(os.urandom(index * 300_001))
        wanted[str(path)] = _hashing.ALGORITHMS
    wanted[str(tmp_path / "missing")] = (_hashing.SHA256,)
    results = _hashing.hash_files(wanted, jobs=4)
    assert set(results) == set(wanted)
    assert isinstance(results[str(tmp_path / "missing")], _hashing.HashError)
    for path, algorithms in wanted.items():
        if path.endswith("missing"):
            continue
        assert results[path] == _hashing.hash_file(path, algorithms)
