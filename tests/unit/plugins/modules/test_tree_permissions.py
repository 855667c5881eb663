"""tree_permissions on real files: owner, group and mode repaired by stat alone, and the reader's access proven."""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

NOBODY = "nobody"


@pytest.fixture
def snapshot():
    # Not under pytest's tmp_path: its base folder is 0700, which no other user can search.
    tmp_path = Path(tempfile.mkdtemp(prefix="tree-permissions-"))
    yield from _snapshot(tmp_path)
    shutil.rmtree(tmp_path)


def _snapshot(tmp_path):
    root = tmp_path / "models" / "m" / "abc"
    (root / "sub").mkdir(parents=True)
    for name in ("config.json", "model-00001-of-00002.safetensors", "sub/tokenizer.json"):
        (root / name).write_bytes(b"x" * 10)
        os.chmod(root / name, 0o644)
    for folder in (tmp_path, tmp_path / "models", tmp_path / "models" / "m", root, root / "sub"):
        os.chmod(folder, 0o755)
    (root / "link").symlink_to("config.json")
    current = root.parent / "current"
    current.symlink_to("abc")
    yield root, current


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run(run_module, path, **extra):
    check_mode = extra.pop("check_mode", False)
    diff = extra.pop("diff", False)
    return run_module("tree_permissions", dict(dict(path=str(path), owner="0", group="0"), **extra),
                      check_mode=check_mode, diff=diff)


def test_a_tidy_tree_is_unchanged(run_module, snapshot):
    root, current = snapshot
    result = run(run_module, current, reader=NOBODY)
    assert result["_rc"] == 0 and result["changed"] is False, result
    assert result["path"] == str(root) and result["entries"] == 5 and result["reader_checked"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_unreadable_shard_is_reported_in_check_mode_then_repaired_once(run_module, snapshot):
    root, current = snapshot
    shard = root / "model-00001-of-00002.safetensors"
    os.chmod(shard, 0o600)
    os.chown(root / "sub", pwd.getpwnam(NOBODY).pw_uid, 0)
    os.chmod(root / "sub", 0o700)
    check = run(run_module, current, reader=NOBODY, check_mode=True, diff=True)
    assert check["changed"] is True and check["fixed_count"] == 2, check
    assert "model-00001-of-00002.safetensors: mode 0600 -> 0644" in check["fixed"]
    assert "model-00001-of-00002.safetensors 0600 0:0" in check["diff"]["before"]
    assert "model-00001-of-00002.safetensors 0644 0:0" in check["diff"]["after"]
    assert mode(shard) == 0o600, "check mode must change nothing"

    fixed = run(run_module, current, reader=NOBODY)
    assert fixed["changed"] is True and fixed["fixed_count"] == 2
    assert mode(shard) == 0o644 and mode(root / "sub") == 0o755 and os.stat(root / "sub").st_uid == 0
    assert mode(root / "link") == 0o777, "links are left alone"
    assert run(run_module, current, reader=NOBODY)["changed"] is False


def test_modes_the_reader_cannot_use_fail_naming_the_entry(run_module, snapshot):
    _unused, current = snapshot
    result = run(run_module, current, reader=NOBODY, file_mode="0640", check_mode=True)
    assert result.get("failed") and "nobody cannot read (r)" in result["msg"], result
    assert "file_mode 0640" in result["msg"]


def test_a_blocking_parent_folder_is_named(run_module, snapshot):
    root, current = snapshot
    os.chmod(root.parent.parent, 0o700)
    try:
        result = run(run_module, current, reader=NOBODY)
        assert result.get("failed") and "search (x) %s" % root.parent.parent in result["msg"], result
    finally:
        os.chmod(root.parent.parent, 0o755)


def test_a_reader_that_does_not_exist_yet_is_not_checked(run_module, snapshot):
    _unused, current = snapshot
    result = run(run_module, current, reader="no-such-user-autoglm")
    assert result["_rc"] == 0 and result["reader_checked"] is False and not result.get("warnings")


@pytest.mark.parametrize("args, words", [
    (dict(file_mode="rw-r--r--"), "file_mode must be an octal mode"),
    (dict(owner="no-such-user-autoglm"), "does not exist on this host"),
])
def test_bad_inputs_are_refused(run_module, snapshot, args, words):
    _unused, current = snapshot
    result = run(run_module, current, **args)
    assert result.get("failed") and words in result["msg"], result
