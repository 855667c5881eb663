"""model_verify on real files: corruption of every kind is caught, the cache is not fooled, check mode writes nothing.

The module runs in a subprocess as Ansible runs it (run_module fixture). The model is a real
safetensors checkpoint written by the safetensors library; expected hashes come from hashlib
and from the real `git hash-object`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from support.modeldir import GIT_FILES, SHARDS, build_model, git_hash_object

from ansible_collections.autoglm.deploy.plugins.module_utils import _verify

SHARD1, SHARD2, SHARD3 = SHARDS


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "model"
    build_model(root)
    return root


@pytest.fixture
def model(pristine, tmp_path) -> Path:
    root = tmp_path / "model"
    shutil.copytree(pristine, root, symlinks=True)
    return root


def verify(run_module, root: Path, **args) -> dict:
    check_mode = args.pop("check_mode", False)
    return run_module("model_verify", dict(path=str(root), **args), check_mode=check_mode)


def tree(root: Path) -> dict:
    """Every path under root with its content hash and mtime: equal trees mean nothing was written."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[path.relative_to(root).as_posix()] = (digest, stat.st_mtime_ns, stat.st_ino)
    return state


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def wait_out_racy_window() -> None:
    # Cache entries whose ctime is this close to the moment the file was looked at are not trusted
    # (a same-tick rewrite would keep the ctime); let the window pass so the next run can use them.
    time.sleep(_verify.RACY_WINDOW_NS / 1e9 + 0.1)


def test_intact_model_passes_and_returns_every_hash(run_module, model):
    result = verify(run_module, model)
    assert result["_rc"] == 0, result["msg"]
    assert result["changed"] is False
    assert result["verified"] == sorted(SHARDS + GIT_FILES + ["model.safetensors.index.json"])
    assert result["mismatched"] == result["missing"] == result["extra"] == result["safetensors_errors"] == []
    shard = result["files"][SHARD1]
    assert shard["sha256"] == hashlib.sha256((model / SHARD1).read_bytes()).hexdigest()
    assert shard["size"] == (model / SHARD1).stat().st_size
    assert (model / ".autoglm" / "verify-cache.json").is_file()  # written, yet not a change


def test_git_kept_files_are_verified_by_git_blob_sha1(run_module, model):
    manifest = json.loads((model / ".autoglm" / "manifest.json").read_text())
    entry = next(item for item in manifest["files"] if item["path"] == "config.json")
    assert entry["sha256"] is None and entry["git_sha1"] == git_hash_object(model / "config.json")
    result = verify(run_module, model)
    assert result["_rc"] == 0 and "config.json" in result["verified"]
    assert result["files"]["config.json"]["git_sha1"] == entry["git_sha1"]

    text = (model / "config.json").read_text().replace("128", "256")
    (model / "config.json").write_text(text)  # same size, other content
    result = verify(run_module, model)
    assert result["failed"]
    assert result["mismatched"] == [{"path": "config.json", "reason": "git_sha1", "expected": entry["git_sha1"],
                                     "actual": git_hash_object(model / "config.json")}]


def test_flipped_byte_mid_shard_is_a_sha256_mismatch(run_module, model):
    expected = hashlib.sha256((model / SHARD2).read_bytes()).hexdigest()
    flip_byte(model / SHARD2, (model / SHARD2).stat().st_size // 2)
    result = verify(run_module, model)
    assert result["failed"] and result["changed"] is False
    assert result["mismatched"] == [{"path": SHARD2, "reason": "sha256", "expected": expected,
                                     "actual": hashlib.sha256((model / SHARD2).read_bytes()).hexdigest()}]
    assert "%s: sha256 expected %s, got" % (SHARD2, expected) in result["msg"]
    assert SHARD2 not in result["verified"] and SHARD1 in result["verified"]


def test_truncated_shard_is_a_size_mismatch(run_module, model):
    size = (model / SHARD3).stat().st_size
    os.truncate(model / SHARD3, size - 100)
    result = verify(run_module, model)
    assert result["failed"]
    assert result["mismatched"] == [{"path": SHARD3, "reason": "size", "expected": size, "actual": size - 100}]


def test_missing_file_is_listed(run_module, model):
    (model / "tokenizer" / "special_tokens_map.json").unlink()
    result = verify(run_module, model)
    assert result["failed"]
    assert result["missing"] == ["tokenizer/special_tokens_map.json"]
    assert "tokenizer/special_tokens_map.json: missing" in result["msg"]


@pytest.mark.parametrize("policy, fails, listed", [("report", False, ["notes.txt"]), ("fail", True, ["notes.txt"]),
                                                   ("ignore", False, [])])
def test_extra_file_policy(run_module, model, policy, fails, listed):
    (model / "notes.txt").write_text("not part of the model\n")
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "config.json.metadata").write_text("c\ne\n1\n")  # default ignore_paths
    result = verify(run_module, model, extra_files=policy)
    assert bool(result.get("failed")) is fails
    assert result["extra"] == listed
    if fails:
        assert "notes.txt: not expected (extra_files=fail)" in result["msg"]


def test_two_swapped_shards_both_mismatch(run_module, model):
    (model / SHARD1).rename(model / "tmp")
    (model / SHARD2).rename(model / SHARD1)
    (model / "tmp").rename(model / SHARD2)
    result = verify(run_module, model)
    assert result["failed"]
    assert [(item["path"], item["reason"]) for item in result["mismatched"]] == [(SHARD1, "sha256"), (SHARD2, "sha256")]
    # Shards already failing their hash are not parsed again, so the index check adds nothing.
    assert result["safetensors_errors"] == []


def test_same_size_replacement_with_restored_mtime_does_not_fool_the_cache(run_module, model):
    wait_out_racy_window()
    first = verify(run_module, model)
    assert first["_rc"] == 0 and first["stats"]["files_hashed"] == 7
    wait_out_racy_window()
    warm = verify(run_module, model)
    assert warm["_rc"] == 0 and warm["stats"]["files_hashed"] == 0 and warm["stats"]["files_from_cache"] == 7

    # In place: same size, same mtime put back with utime(). utime() itself sets ctime to now,
    # and ctime cannot be set from user space, so the cached (size, mtime, ctime, inode) no longer matches.
    shard = model / SHARD1
    before = shard.stat()
    flip_byte(shard, before.st_size - 10)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    # By rename: a new file of the same size and mtime takes the name; it has a new inode (and ctime).
    other = model / "config.json"
    ostat = other.stat()
    replacement = model / "config.json.new"
    replacement.write_bytes(other.read_bytes().replace(b"128", b"512"))
    os.utime(replacement, ns=(ostat.st_atime_ns, ostat.st_mtime_ns))
    replacement.replace(other)
    assert shard.stat().st_mtime_ns == before.st_mtime_ns and shard.stat().st_size == before.st_size
    assert other.stat().st_mtime_ns == ostat.st_mtime_ns and other.stat().st_size == ostat.st_size

    result = verify(run_module, model)
    assert result["failed"]
    assert [(item["path"], item["reason"]) for item in result["mismatched"]] == [("config.json", "git_sha1"),
                                                                                 (SHARD1, "sha256")]
    assert result["stats"]["files_hashed"] == 2 and result["stats"]["files_from_cache"] == 5


def test_full_mode_rehashes_everything(run_module, model):
    wait_out_racy_window()
    verify(run_module, model)
    wait_out_racy_window()
    result = verify(run_module, model, mode="full")
    assert result["_rc"] == 0 and result["stats"]["files_hashed"] == 7 and result["stats"]["files_from_cache"] == 0


def test_symlink_leading_outside_is_refused(run_module, model, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 10)
    (model / "tokenizer" / "vocab.bin").symlink_to(outside)
    (model / "inside-link.json").symlink_to("config.json")  # inside the directory: fine
    result = verify(run_module, model)
    assert result["failed"]
    assert "symlink(s) lead outside the model directory" in result["msg"]
    assert "tokenizer/vocab.bin -> %s" % outside in result["msg"]
    assert "inside-link.json" not in result["msg"]


def test_symlinked_directory_escape_is_refused(run_module, model, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (model / "extra_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = verify(run_module, model)
    assert result["failed"] and "extra_dir -> " in result["msg"]


def test_check_mode_writes_nothing_not_even_the_cache(run_module, model):
    flip_byte(model / SHARD1, 5000)
    before = tree(model)
    result = verify(run_module, model, quarantine=True, check_mode=True)
    assert result["failed"] and result["changed"] is True
    assert [item["path"] for item in result["quarantined"]] == [SHARD1]
    assert tree(model) == before
    assert not (model / ".autoglm" / "verify-cache.json").exists()


def test_quarantine_moves_only_bad_files(run_module, model):
    flip_byte(model / SHARD2, 4096)
    # A file whose hash matches the manifest but that is not a sound safetensors file is also bad.
    broken = model / "extra-broken.safetensors"
    broken.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    manifest = json.loads((model / ".autoglm" / "manifest.json").read_text())
    manifest["files"].append({"path": broken.name, "size": broken.stat().st_size, "git_sha1": None,
                              "sha256": hashlib.sha256(broken.read_bytes()).hexdigest(), "endpoint": "http://127.0.0.1"})
    manifest["files"].sort(key=lambda item: item["path"])
    (model / ".autoglm" / "manifest.json").write_text(json.dumps(manifest))
    untouched = {rel: value for rel, value in tree(model).items()
                 if rel not in (SHARD2, broken.name) and not rel.startswith(".autoglm")}

    result = verify(run_module, model, quarantine=True)
    assert result["failed"] and result["changed"] is True
    assert sorted(item["path"] for item in result["quarantined"]) == sorted([SHARD2, broken.name])
    assert [item["path"] for item in result["safetensors_errors"]] == [broken.name]
    assert "does not fit" in result["safetensors_errors"][0]["error"]
    for item in result["quarantined"]:
        target = Path(item["to"])
        assert target.is_file() and target.name == item["path"]
        assert target.parent.parent == model / ".autoglm" / "quarantine"
        assert not (model / item["path"]).exists()
    assert {rel: value for rel, value in tree(model).items() if not rel.startswith(".autoglm")} == untouched
    cache = json.loads((model / ".autoglm" / "verify-cache.json").read_text())
    assert SHARD2 not in cache["files"] and SHARD1 in cache["files"]

    again = verify(run_module, model)  # what the next fetch must bring back: exactly the quarantined files
    assert again["missing"] == sorted([SHARD2, broken.name]) and again["mismatched"] == []
    assert again["changed"] is False


def test_a_good_rerun_is_not_a_change(run_module, model):
    results = [verify(run_module, model, quarantine=True) for _unused in range(2)]
    assert [item["changed"] for item in results] == [False, False]


def test_index_naming_a_tensor_absent_from_its_shard(run_module, model):
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["layers.9.weight"] = SHARD3
    index_path.write_text(json.dumps(index))
    result = verify(run_module, model, expected_from="inline",
                    files={SHARD3: {"sha256": hashlib.sha256((model / SHARD3).read_bytes()).hexdigest()},
                           "model.safetensors.index.json": {"size": index_path.stat().st_size,
                                                            "git_sha1": git_hash_object(index_path)}},
                    extra_files="ignore")
    assert result["failed"]
    assert result["safetensors_errors"] == [{"path": SHARD3, "error": "model.safetensors.index.json: 1 tensor(s) "
                                             "the index puts in this shard are not in its header: layers.9.weight"}]


def test_checksums_file_source(run_module, model):
    lines = ["%s  ./%s" % (hashlib.sha256((model / rel).read_bytes()).hexdigest(), rel) for rel in SHARDS]
    (model / ".autoglm" / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    result = verify(run_module, model, expected_from="checksums", checksums_file=".autoglm/SHA256SUMS",
                    extra_files="ignore")
    assert result["_rc"] == 0 and result["verified"] == SHARDS
    flip_byte(model / SHARD3, 100)
    result = verify(run_module, model, expected_from="checksums", checksums_file=".autoglm/SHA256SUMS",
                    extra_files="ignore")
    assert [item["path"] for item in result["mismatched"]] == [SHARD3]


@pytest.mark.parametrize("args, message", [
    (dict(), "no manifest at"),
    (dict(expected_from="inline"), "expected_from=inline needs files"),
    (dict(expected_from="inline", files={"../x": {"sha256": "a" * 64}}), "must be normalised"),
    (dict(expected_from="inline", files={"x": {"sha256": "zz"}}), "sha256 must be 64 hex digits"),
    (dict(expected_from="checksums"), "needs checksums_file"),
])
def test_bad_input_is_named(run_module, tmp_path, args, message):
    (tmp_path / "m").mkdir()
    result = verify(run_module, tmp_path / "m", **args)
    assert result["failed"] and message in result["msg"]
