"""Role model_weights on localhost: a weight file made unreadable to the service user is found and repaired by
owner and mode alone (no refetch, no rehash of the rest), check mode first, then an idempotent rerun."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from support.mirror import TINY_COMMIT
from test_model_weights_arguments import failures, requests, run_role

READER = "model_weights_reader=nobody"


@pytest.fixture
def root():
    # Not under pytest's tmp_path (0700): the reader, nobody, must be able to reach the models.
    base = Path(tempfile.mkdtemp(prefix="weights-readable-"))
    os.chmod(base, 0o755)
    yield base / "models"
    shutil.rmtree(base)


def modes(revision: Path) -> dict:
    return {str(path.relative_to(revision)): (stat.S_IMODE(path.lstat().st_mode), path.lstat().st_uid)
            for path in [revision, *revision.rglob("*")] if not path.is_symlink()}


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
def test_unreadable_shard_and_foreign_config_are_repaired_by_one_rerun(tmp_path, root, mirror_factory):
    server = mirror_factory()
    code, _unused, report = run_role(tmp_path, root, server.url, READER)
    assert code == 0, failures(report)
    assert any("/resolve/" in path for path, _unused in requests(server)), "the first run downloads the files"
    revision = root / "tiny" / TINY_COMMIT
    converged = modes(revision)
    assert {mode for mode, _unused in converged.values()} <= {0o644, 0o755}

    shard = sorted(revision.glob("*.safetensors"))[0]
    os.chmod(shard, 0o600)
    os.chown(revision / "config.json", 65534, 65534)
    os.chmod(revision / "config.json", 0o600)

    code, stats, report = run_role(tmp_path, root, server.url, READER, check=True)
    assert code == 0 and stats["changed"] >= 1, failures(report)
    assert stat.S_IMODE(shard.stat().st_mode) == 0o600, "check mode must change nothing"

    seen = len(requests(server))
    code, stats, report = run_role(tmp_path, root, server.url, READER)
    assert code == 0 and stats["changed"] == 1, (failures(report), json.dumps(report)[:2000])
    assert modes(revision) == converged
    assert not [path for path, _unused in requests(server, seen) if "/resolve/" in path], "nothing is downloaded again"

    code, stats, report = run_role(tmp_path, root, server.url, READER)
    assert code == 0 and stats["changed"] == 0, failures(report)


def test_modes_the_reader_cannot_use_are_refused_naming_the_setting(tmp_path, root, mirror_factory):
    server = mirror_factory()
    code, _unused, report = run_role(tmp_path, root, server.url, READER, "model_weights_file_mode=0640")
    assert code != 0
    assert any("nobody cannot read (r)" in msg and "file_mode 0640" in msg for msg in failures(report)), failures(report)
