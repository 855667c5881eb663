"""Manifest format 1: validation names the problem, writes are atomic and round-trip."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

SHA = "a" * 64
GIT = "b" * 40


def entry(path="model.safetensors", **overrides):
    base = {"path": path, "size": 10, "sha256": SHA, "git_sha1": None, "endpoint": "https://huggingface.co"}
    base.update(overrides)
    return base


def manifest(files=None, **overrides):
    data = {"format": 1, "source": "huggingface", "repo_id": "zai-org/AutoGLM-Phone-9B", "revision": "main",
            "commit": "c" * 40, "fetched_at": "2025-01-01T00:00:00Z",
            "files": files if files is not None else [entry("b.json", sha256=None, git_sha1=GIT), entry()]}
    data.update(overrides)
    return data


def test_round_trip_sorted_and_atomic(tmp_path):
    path = _manifest.write(str(tmp_path), manifest())
    assert path == str(tmp_path / ".autoglm" / "manifest.json")
    loaded = _manifest.load(path)
    assert [item["path"] for item in loaded["files"]] == ["b.json", "model.safetensors"]
    assert loaded == _manifest.validate(json.loads((tmp_path / ".autoglm" / "manifest.json").read_text()))
    assert os.listdir(tmp_path / ".autoglm") == ["manifest.json"]  # no temp file left


@pytest.mark.parametrize("bad, message", [
    (dict(format=2), "format 2 is not supported"),
    (dict(source="Git Hub"), "source 'Git Hub' is not a hub name"),
    (dict(commit=""), "commit must be a non-empty string"),
    (dict(files={}), "files must be a list"),
    (dict(files=[entry("../etc/passwd")]), "must be normalised"),
    (dict(files=[entry("/abs")]), "relative POSIX path"),
    (dict(files=[entry(".autoglm/x")]), "holds state"),
    (dict(files=[entry(size=-1)]), "size must be a non-negative integer"),
    (dict(files=[entry(sha256="XYZ")]), "sha256 must be lowercase hex of 64 digits"),
    (dict(files=[entry(git_sha1=SHA)]), "git_sha1 must be lowercase hex of 40 digits"),
    (dict(files=[entry(sha256=None)]), "neither sha256 nor git_sha1"),
    (dict(files=[entry(endpoint="https://user:tok@hf.example")]), "carries credentials"),
    (dict(files=[entry(), entry()]), "lists 'model.safetensors' twice"),
])
def test_validation_names_the_problem(bad, message):
    with pytest.raises(_manifest.ManifestError, match=message):
        _manifest.validate(manifest(**bad))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(_manifest.ManifestError, match="no manifest at"):
        _manifest.load(str(tmp_path / "nope.json"))
    broken = tmp_path / "m.json"
    broken.write_text("{")
    with pytest.raises(_manifest.ManifestError, match="not valid JSON"):
        _manifest.load(str(broken))


def test_strip_credentials():
    assert _manifest.strip_credentials("https://u:p@hf-mirror.example:8443/base/?token=x") == "https://hf-mirror.example:8443/base"
    assert _manifest.is_state_path(".autoglm/verify-cache.json") and not _manifest.is_state_path(".autoglmx")
