"""Role model_weights on localhost with a model published sealed (tools/seal_model.py, real age) on the project's
mirror: check mode writes nothing; the package is fetched, decrypted and verified, and only then does current
move; a rerun changes nothing and sends one listing request; a wrong key and a package altered after sealing each
fail with nothing promoted; a shard corrupted in the plaintext is repaired from the package."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.mirror import ingest, mirror_fixture_server
from support.playbook import REPO
from test_model_weights_arguments import failures, requests, run_role

SEALED_REPO, SEALED = "test-org/tiny-sealed", "5" * 40
ALTERED_REPO, ALTERED = "test-org/tiny-sealed-altered", "6" * 40


def sha256s(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and ".autoglm" not in p.relative_to(folder).parts}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("age-keys")
    found = {}
    for name in ("right", "wrong"):
        subprocess.run(["age-keygen", "-o", str(folder / name)], check=True, capture_output=True)
        text = (folder / name).read_text()
        found[name] = {"identity": next(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-")),
                       "recipient": subprocess.run(["age-keygen", "-y", str(folder / name)], check=True,
                                                   capture_output=True, text=True).stdout.strip()}
    return found


@pytest.fixture(scope="module")
def sealed_mirror(tmp_path_factory, tiny_model_dir, keys):
    """A mirror holding the tiny model sealed for `right`, and the same package with a byte flipped after sealing."""
    base = tmp_path_factory.mktemp("sealed-mirror")
    package = base / "package"
    subprocess.run([sys.executable, str(REPO / "tools" / "seal_model.py"), str(tiny_model_dir), str(package),
                    "--name", "tiny", "--age-recipient", keys["right"]["recipient"]], check=True, capture_output=True)
    altered = base / "altered"
    altered.mkdir()
    data = bytearray((package / "tiny.tar.age").read_bytes())
    data[len(data) // 2] ^= 0x01
    (altered / "tiny.tar.age").write_bytes(bytes(data))
    ingest(base / "data", SEALED_REPO, package, SEALED, ["main"])
    ingest(base / "data", ALTERED_REPO, altered, ALTERED, ["main"])
    server = mirror_fixture_server(base / "data", base)
    yield server
    server.stop()


def sealed(repo: str, key: str) -> str:
    return json.dumps({"model_weights_repo_id": repo, "model_weights_sealed": "age", "model_weights_sealed_key": key})


def test_a_sealed_model_is_decrypted_verified_then_promoted_and_a_rerun_changes_nothing(
        tmp_path, sealed_mirror, tiny_model_dir, keys):
    root = tmp_path / "models"
    settings = sealed(SEALED_REPO, keys["right"]["identity"])
    code, stats, report = run_role(tmp_path, root, sealed_mirror.url, settings, check=True)
    assert code == 0 and stats["changed"] > 0, failures(report)
    assert not root.exists()

    code, stats, report = run_role(tmp_path, root, sealed_mirror.url, settings)
    assert code == 0, failures(report)
    assert keys["right"]["identity"] not in json.dumps(report)
    assert os.readlink(root / "tiny" / "current") == SEALED
    plaintext = sha256s(root / "tiny" / SEALED)
    assert plaintext.pop("SHA256SUMS") and plaintext == sha256s(tiny_model_dir)
    # The package is not kept (model_weights_sealed_keep_package), and no staging is left behind.
    assert not (root / "tiny" / ".sealed" / SEALED).exists()
    assert not [p.name for p in (root / "tiny").iterdir() if p.name.startswith(".unseal-")]

    seen = len(requests(sealed_mirror))
    code, stats, report = run_role(tmp_path, root, sealed_mirror.url, settings)
    assert code == 0 and stats["changed"] == 0, failures(report)
    assert [path for path, _unused in requests(sealed_mirror, seen)] == ["/api/models/%s/revision/main" % SEALED_REPO]

    # A shard corrupted in place (same size): quarantined, the package fetched again, only that shard put back.
    shard = sorted((root / "tiny" / SEALED).glob("*.safetensors"))[0]
    kept = (root / "tiny" / SEALED / "config.json").stat().st_ino
    with open(shard, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 16)
    code, stats, report = run_role(tmp_path, root, sealed_mirror.url, settings)
    assert code == 0 and stats["changed"] > 0, failures(report)
    assert sha256s(root / "tiny" / SEALED) == dict(plaintext, SHA256SUMS=sha256s(root / "tiny" / SEALED)["SHA256SUMS"])
    assert (root / "tiny" / SEALED / "config.json").stat().st_ino == kept


@pytest.mark.parametrize("case", ["wrong key", "altered package"])
def test_a_wrong_key_or_an_altered_package_fails_with_nothing_promoted(tmp_path, sealed_mirror, keys, case):
    root = tmp_path / "models"
    settings = (sealed(SEALED_REPO, keys["wrong"]["identity"]) if case == "wrong key"
                else sealed(ALTERED_REPO, keys["right"]["identity"]))
    code, _unused, report = run_role(tmp_path, root, sealed_mirror.url, settings)
    assert code != 0
    said = " ".join(failures(report))
    expected = "the key does not open tiny.tar.age" if case == "wrong key" else "tiny.tar.age could not be decrypted"
    assert expected in said, said
    folder = root / "tiny"
    assert not [p.name for p in folder.iterdir() if p.name in ("current", SEALED, ALTERED) or p.name.startswith(".unseal-")]
    assert keys["right"]["identity"] not in json.dumps(report) and keys["wrong"]["identity"] not in json.dumps(report)


def test_a_sealed_model_without_its_key_is_refused_before_anything_is_written(tmp_path, sealed_mirror):
    root = tmp_path / "models"
    code, _unused, report = run_role(tmp_path, root, sealed_mirror.url, sealed(SEALED_REPO, ""))
    assert code != 0 and any("model_weights_sealed_key is empty" in msg for msg in failures(report)), failures(report)
    assert not root.exists()
