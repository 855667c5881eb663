"""Fixtures for cross-component tests: the tiny test model and the model mirror (see tests/support/mirror.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.mirror import MirrorProcess, build_mirror_data, mirror_fixture_server
from support.testmodel import tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def mirror_data(tmp_path_factory, tiny_model_dir) -> Path:
    return build_mirror_data(tmp_path_factory.mktemp("mirror") / "data", tiny_model_dir)


@pytest.fixture(scope="session")
def mirror(mirror_data, tmp_path_factory):
    server = mirror_fixture_server(mirror_data, tmp_path_factory.mktemp("mirror-logs"))
    yield server
    server.stop()


@pytest.fixture
def mirror_factory(mirror_data, tmp_path):
    started: list[MirrorProcess] = []

    def start(data: Path | None = None, **options) -> MirrorProcess:
        server = mirror_fixture_server(data or mirror_data, tmp_path, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
