"""ingest --manifest: the seed's verified manifest (as model_fetch writes it) stands in for hashing the snapshot;
and the helpers the mirror shares with the modules (_stdlib) have one home, shipped in the mirror's archive."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "mirror"))
from autoglm_mirror import ingest as ingest_module
from autoglm_mirror.cli import main as cli_main
from autoglm_mirror.ingest import IngestError, ingest

from ansible_collections.autoglm.deploy.plugins.lookup.code_archive import pack
from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest, _stdlib

COMMIT = "cd" * 20
FILES = {"config.json": b'{"a": 1}\n', "model.safetensors": os.urandom(3000), "sub/tokenizer.json": b"{}"}


def seed(tmp_path: Path, commit: str = COMMIT, drop_git_sha1: tuple = ()) -> Path:
    """A snapshot folder as model_fetch leaves it: the files and .autoglm/manifest.json."""
    src = tmp_path / "seed"
    entries = []
    for path, data in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
        lfs = path.endswith(".safetensors")
        entries.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "git_sha1": None if lfs or path in drop_git_sha1 else _stdlib.git_blob_sha1(data),
                        "endpoint": "https://huggingface.co"})
    _manifest.write(str(src), _manifest.new("huggingface", "org/model", "main", commit, entries))
    return src


def manifest_of(src: Path) -> str:
    return str(src / ".autoglm" / "manifest.json")


def test_the_manifest_stands_in_for_hashing(tmp_path, monkeypatch):
    src, data = seed(tmp_path), tmp_path / "data"
    hashed = []
    real = ingest_module.hash_file
    monkeypatch.setattr(ingest_module, "hash_file", lambda s, d: hashed.append(s) or real(s, d))
    plan = ingest(str(data), "org/model", str(src), dry_run=True, manifest=manifest_of(src))
    assert plan["changed"] and not plan["existed"] and plan["commit"] == COMMIT
    assert plan["copy_bytes"] == sum(map(len, FILES.values())) and hashed == []
    first = ingest(str(data), "org/model", str(src), manifest=manifest_of(src))
    assert first["changed"] and first["commit"] == COMMIT and first["files"] == 3
    snapshot = data / "repos/org/model/snapshots" / COMMIT
    assert {p: (snapshot / p).read_bytes() for p in FILES} == FILES
    # Only what this ingest hashed is recorded as verified; the rest waits for the server or `verify`.
    verified = json.loads((snapshot.parent / (COMMIT + ".verified.json")).read_text())["files"]
    assert set(verified) <= set(FILES) and len(verified) == first["hashed"] == len(hashed)
    # A hashing ingest of the same content agrees with the manifest's index, and a rerun reads nothing.
    assert ingest(str(data), "org/model", str(src), COMMIT)["changed"] is False
    hashed.clear()
    again = ingest(str(data), "org/model", str(src), manifest=manifest_of(src), branches=["main", "stable"],
                   dry_run=True)
    assert again["changed"] and again["existed"] and again["copy_bytes"] == 0 and hashed == []


def test_a_file_the_manifest_gives_too_few_hashes_for_is_hashed(tmp_path):
    src = seed(tmp_path, drop_git_sha1=("config.json",))  # ModelScope lists no git blob id
    data = tmp_path / "data"
    result = ingest(str(data), "org/model", str(src), manifest=manifest_of(src))
    index = json.loads((data / "repos/org/model/snapshots" / (COMMIT + ".index.json")).read_text())
    entry = {f["path"]: f for f in index["files"]}["config.json"]
    assert entry["git_sha1"] == _stdlib.git_blob_sha1(FILES["config.json"]) and result["hashed"] >= 1


def test_a_source_that_differs_from_its_manifest_is_refused(tmp_path):
    src = seed(tmp_path)
    (src / "config.json").write_bytes(b'{"a": 22}\n')
    with pytest.raises(IngestError, match=r"config\.json holds 10 bytes, the manifest says 9: verify the source first"):
        ingest(str(tmp_path / "data"), "org/model", str(src), manifest=manifest_of(src), dry_run=True)


def test_the_commit_comes_from_the_manifest_and_must_agree(tmp_path, capsys):
    src = seed(tmp_path)
    with pytest.raises(IngestError, match="is not the manifest's commit"):
        ingest(str(tmp_path / "data"), "org/model", str(src), commit="ef" * 20, manifest=manifest_of(src))
    (src / ".autoglm" / "manifest.json").write_text('{"format": 2}')
    assert cli_main(["ingest", "--data", str(tmp_path / "data"), "--repo", "org/model", "--src", str(src),
                     "--manifest", manifest_of(src)]) == 1
    assert "is not a model_fetch manifest" in capsys.readouterr().err


def test_a_commit_derived_from_content_is_model_fetchs(tmp_path):
    src = seed(tmp_path)
    result = ingest(str(tmp_path / "data"), "org/model", str(src), dry_run=True)
    pairs = [(path, hashlib.sha256(data).hexdigest()) for path, data in FILES.items()]
    assert result["commit"] == _stdlib.content_commit(pairs)
    assert result["commit"] == hashlib.sha1(json.dumps(sorted([list(p) for p in pairs])).encode()).hexdigest()


def test_the_shared_helpers_have_one_home_and_ship_in_the_mirrors_archive(tmp_path):
    link = REPO / "mirror" / "autoglm_mirror" / "_stdlib.py"
    home = REPO / "plugins" / "module_utils" / "_stdlib.py"
    assert link.is_symlink() and link.resolve() == home.resolve()
    archive = pack(str(REPO / "mirror" / "autoglm_mirror"), ["*.py"])
    assert "_stdlib.py" in archive["files"]
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(archive["data"])), mode="r:gz") as tar:
        assert tar.extractfile("_stdlib.py").read() == home.read_bytes()
        tar.extractall(tmp_path / "lib" / "autoglm_mirror", filter="data")
    # On a node: the standard library only, no collection, no Ansible.
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, %r); "
                           "import autoglm_mirror.cli, autoglm_mirror.server; "
                           "from autoglm_mirror.store import git_blob_sha1; print(git_blob_sha1(b'x'))"
                           % str(tmp_path / "lib")], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == _stdlib.git_blob_sha1(b"x") == "c1b0730e0133447badcfd47fd144e254807b06e1"
