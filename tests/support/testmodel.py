"""Build the tiny test model once per test session (shared by pytest-xdist workers) and hand out its path.

    from support.testmodel import tiny_model   # tests/ is on sys.path under pytest
    path = tiny_model(tmp_path_factory)        # directory with config.json, 3 shards, tokenizer, ...
    path = glm4v_model(tmp_path_factory)       # the tiny trained GLM-4.1V (builder mode glm4v)

The builder is tools/testmodel/build_test_model.py; nothing it writes is committed.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "tools" / "testmodel" / "build_test_model.py"


def load_builder():
    """The builder script as a module (it lives under tools/, which is not a package)."""
    spec = importlib.util.spec_from_file_location("build_test_model", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_or_tiny(model, work: Path) -> Path:
    """The benchmarks' model: the one given, else the seeded tiny model built into work."""
    if model is not None:
        return model
    load_builder().build_tiny_model(work / "tiny", seed=0)
    return work / "tiny"


def _shared_root(tmp_path_factory) -> Path:
    # Under xdist every worker has its own basetemp below one common parent: build there once.
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _built_once(tmp_path_factory, kind: str, build: str, seed: int) -> Path:
    """Path of the model `build` (a builder function) writes with `seed`; built at most once per
    session and builder version, under a file lock."""
    tag = hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:12]
    root = _shared_root(tmp_path_factory)
    target = root / ("%s-%s-seed%d" % (kind, tag, seed))
    with open(root / (target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            staging = root / (target.name + ".building")
            shutil.rmtree(staging, ignore_errors=True)
            getattr(load_builder(), build)(staging, seed=seed)
            staging.rename(target)
    return target


def tiny_model(tmp_path_factory, seed: int = 0) -> Path:
    """Path of the tiny model built with `seed`; built at most once per session, under a file lock."""
    return _built_once(tmp_path_factory, "tiny-model", "build_tiny_model", seed)


def glm4v_model(tmp_path_factory, seed: int = 0) -> Path:
    """Path of the tiny trained GLM-4.1V model (about half a minute of CPU to build), shared likewise."""
    return _built_once(tmp_path_factory, "glm4v-model", "build_tiny_glm4v", seed)
