"""The mirror's ingest command, LFS rule, range parsing and path checks (in-process, real files)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "mirror"))
from autoglm_mirror.cli import main as cli_main
from autoglm_mirror.ingest import IngestError, ingest
from autoglm_mirror.server import parse_range
from autoglm_mirror.store import Store, StoreError, check_repo_id, check_repo_path, is_lfs

COMMIT = "ab" * 20


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"a": 1}\n')
    (d / "weights.safetensors").write_bytes(os.urandom(1000))
    (d / "sub" / "notes.txt").write_text("hello\n")
    return d


def test_ingest_hashes_each_file_and_reruns_as_a_no_op(tmp_path, src):
    data = tmp_path / "data"
    first = ingest(str(data), "org/model", str(src), COMMIT, ["main"], ["v1"])
    assert first["changed"] is True and first["files"] == 3
    index = json.loads((data / "repos/org/model/snapshots" / (COMMIT + ".index.json")).read_text())
    entry = {f["path"]: f for f in index["files"]}["config.json"]
    body = b'{"a": 1}\n'
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["git_sha1"] == hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
    assert entry["lfs"] is False and {f["path"]: f for f in index["files"]}["weights.safetensors"]["lfs"] is True
    assert (data / "repos/org/model/snapshots" / COMMIT / "sub" / "notes.txt").read_text() == "hello\n"
    assert ingest(str(data), "org/model", str(src), COMMIT, ["main"], ["v1"])["changed"] is False
    snap = Store(str(data)).repo("org/model")
    assert snap.resolve("v1") == snap.resolve("main") == snap.resolve(COMMIT) == COMMIT
    assert not [p for p in (data / "repos/org/model/snapshots").iterdir() if p.name.startswith(".incoming")]


def test_same_commit_with_other_content_is_refused_unless_forced(tmp_path, src):
    data = tmp_path / "data"
    ingest(str(data), "org/model", str(src), COMMIT)
    (src / "config.json").write_text('{"a": 2}\n')
    with pytest.raises(IngestError, match="already exists with other content"):
        ingest(str(data), "org/model", str(src), COMMIT)
    assert ingest(str(data), "org/model", str(src), COMMIT, force=True)["changed"] is True
    assert (data / "repos/org/model/snapshots" / COMMIT / "config.json").read_text() == '{"a": 2}\n'


def test_commit_derived_from_content_and_refs_move(tmp_path, src):
    data = tmp_path / "data"
    one = ingest(str(data), "org/model", str(src))["commit"]
    assert len(one) == 40 and ingest(str(data), "org/model", str(src))["changed"] is False
    (src / "extra.md").write_text("more\n")
    two = ingest(str(data), "org/model", str(src))
    assert two["changed"] and two["commit"] != one
    assert Store(str(data)).repo("org/model").resolve("main") == two["commit"]
    assert Store(str(data)).repo("org/model").snapshot(one) is not None  # the old revision stays served


def test_dry_run_writes_nothing(tmp_path, src):
    data = tmp_path / "data"
    assert ingest(str(data), "org/model", str(src), COMMIT, dry_run=True)["changed"] is True
    assert not data.exists()


def test_symlinked_source_files_are_copied_as_regular_files(tmp_path, src):
    # A Hugging Face cache snapshot is made of links into blobs/.
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc").write_text("linked content\n")
    os.symlink(blobs / "abc", src / "linked.txt")
    data = tmp_path / "data"
    ingest(str(data), "org/model", str(src), COMMIT)
    copied = data / "repos/org/model/snapshots" / COMMIT / "linked.txt"
    assert not copied.is_symlink() and copied.read_text() == "linked content\n"


@pytest.mark.parametrize("link", [False, True])
def test_files_are_copies_never_hard_links(tmp_path, src, link):
    # One inode for the seed's file and the mirror's let one corruption hit both: --link now copies too.
    data = tmp_path / "data"
    ingest(str(data), "org/model", str(src), COMMIT, link=link)
    placed = data / "repos/org/model/snapshots" / COMMIT / "weights.safetensors"
    assert placed.stat().st_ino != (src / "weights.safetensors").stat().st_ino
    assert placed.stat().st_nlink == 1 and placed.read_bytes() == (src / "weights.safetensors").read_bytes()


def test_state_folders_are_not_content(tmp_path, src):
    for state in (".git", ".cache/huggingface", ".autoglm/quarantine"):
        (src / state).mkdir(parents=True)
        (src / state / "x.json").write_text("{}")
    data = tmp_path / "data"
    assert ingest(str(data), "org/model", str(src), COMMIT, link=True)["files"] == 3
    index = json.loads((data / "repos/org/model/snapshots" / (COMMIT + ".index.json")).read_text())
    assert sorted(f["path"] for f in index["files"]) == ["config.json", "sub/notes.txt", "weights.safetensors"]


@pytest.mark.parametrize("repo_id", ["model", "a/b/c", "../etc", "org/..", "org/.hidden", "org/na me", ""])
def test_bad_repo_ids_are_refused(repo_id):
    with pytest.raises(StoreError):
        check_repo_id(repo_id)


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "./a", "a/\0"])
def test_bad_repo_paths_are_refused(path):
    with pytest.raises(StoreError):
        check_repo_path(path)


@pytest.mark.parametrize(("path", "size", "lfs"), [
    ("model.safetensors", 10, True), ("pytorch_model.bin", 10, True), ("x.gguf", 1, True),
    ("tokenizer.json", 9 << 20, False), ("tokenizer.json", 10 << 20, True), ("README.md", 5, False),
])
def test_lfs_rule_by_suffix_or_size(path, size, lfs):
    assert is_lfs(path, size) is lfs


@pytest.mark.parametrize(("header", "size", "expect"), [
    (None, 100, None), ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)), ("bytes=50-5000", 100, (50, 99)), ("bytes=100-", 100, "unsatisfiable"),
    ("bytes=-0", 100, "unsatisfiable"), ("bytes=0-", 0, "unsatisfiable"), ("bytes=5-1", 100, None),
    ("bytes=0-1,3-4", 100, None), ("items=0-1", 100, None),
])
def test_parse_range(header, size, expect):
    assert parse_range(header, size) == expect


def test_cli_ingest_prints_json_and_fails_clearly(tmp_path, src, capsys):
    assert cli_main(["ingest", "--data", str(tmp_path / "d"), "--repo", "org/m", "--src", str(src), "--tag", "v2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["refs"] == {"branches": {}, "tags": {"v2": out["commit"]}}
    assert cli_main(["ingest", "--data", str(tmp_path / "d"), "--repo", "org/m", "--src", str(tmp_path / "nope")]) == 1
    assert "is not a directory" in capsys.readouterr().err
