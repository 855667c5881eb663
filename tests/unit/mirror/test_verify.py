"""The mirror's content checks (verify.py) in-process on real files: copies never share an inode, a rewrite is
seen through a kept mtime, and verify_snapshot's findings for each kind of damage."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "mirror"))
from autoglm_mirror.ingest import ingest
from autoglm_mirror.store import Store
from autoglm_mirror.verify import VerifyError, clone_or_copy, file_key, verify_snapshot

COMMIT = "cd" * 20
REPO = "org/model"


@pytest.fixture
def seeded(tmp_path) -> tuple[Path, Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"a": 1}\n')
    (src / "weights.safetensors").write_bytes(os.urandom(3 << 20))
    data = tmp_path / "data"
    ingest(str(data), REPO, str(src), COMMIT)
    return data, src, data / "repos" / REPO / "snapshots" / COMMIT


@pytest.mark.parametrize("plain", [True, False])
def test_clone_or_copy_makes_a_new_inode_with_the_same_bytes(tmp_path, plain):
    src, dest = tmp_path / "a", tmp_path / "b"
    src.write_bytes(os.urandom(1 << 20) * 3)
    how = clone_or_copy(str(src), str(dest), plain=plain)
    assert how in ({"reflink", "copy_file_range", "copy"} if plain else {"reflink", "copy_file_range", None})
    assert dest.stat().st_ino != src.stat().st_ino
    if how is not None:
        assert dest.read_bytes() == src.read_bytes()


def test_a_rewrite_that_keeps_size_and_mtime_changes_the_identity(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    before = os.stat(path)
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"y", 50)
    os.close(fd)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns
    assert file_key(after) != file_key(before)  # ctime moved: the file is hashed again


def test_ingest_records_identities_the_server_trusts(seeded):
    data, _src, snap_dir = seeded
    store = Store(str(data))
    snap = store.repo(REPO).snapshot(COMMIT)
    known = store.verified(snap)
    assert set(known) == {"config.json", "weights.safetensors"}
    assert known["weights.safetensors"]["key"] == file_key(os.lstat(snap_dir / "weights.safetensors"))
    (snap_dir.parent / (COMMIT + ".verified.json")).write_text("not json")
    assert store.verified(store.repo(REPO).snapshot(COMMIT)) == {}  # unreadable: nothing is trusted


def test_verify_finds_each_kind_of_damage(seeded):
    data, src, snap_dir = seeded
    assert verify_snapshot(str(data), REPO, COMMIT)["changed"] is False
    with open(snap_dir / "weights.safetensors", "ab") as fh:
        fh.write(b"!")  # another size: bad without hashing
    (snap_dir / "config.json").unlink()
    found = verify_snapshot(str(data), REPO, COMMIT, src=str(src), dry_run=True)
    assert found["bad"] == ["weights.safetensors"] and found["missing"] == ["config.json"]
    assert found["hashed"] == 0 and found["repaired"] == [] and found["changed"] is True
    fixed = verify_snapshot(str(data), REPO, COMMIT, src=str(src))
    assert sorted(fixed["repaired"]) == ["config.json", "weights.safetensors"] and len(fixed["quarantined"]) == 1
    assert (snap_dir / "weights.safetensors").read_bytes() == (src / "weights.safetensors").read_bytes()
    cache = json.loads((snap_dir.parent / (COMMIT + ".verified.json")).read_text())["files"]
    assert cache["weights.safetensors"]["key"] == file_key(os.lstat(snap_dir / "weights.safetensors"))


def test_verify_names_what_is_missing(tmp_path, seeded):
    data, _src, _snap = seeded
    with pytest.raises(VerifyError, match="ingest it first"):
        verify_snapshot(str(data), REPO, "ef" * 20)
    with pytest.raises(VerifyError, match="repair source"):
        verify_snapshot(str(data), REPO, COMMIT, src=str(tmp_path / "absent"))
