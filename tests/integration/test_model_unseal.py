"""Sealed weights: tools/seal_model.py seals a model with the real age and gpg commands, model_unseal (as Ansible
runs it) opens it. A wrong key, an altered byte, a manifest that lies and a hostile archive are each refused
with nothing promoted; a repair puts back only what is missing; the key never appears in the result."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.playbook import REPO

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

SEAL = REPO / "tools" / "seal_model.py"
PASSPHRASE = "correct horse battery staple"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plain") / "tiny"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"architectures": ["Tiny"]}\n')
    # Larger than the tools' chunks (age: 64 KiB), so a flipped byte lands in a chunk of its own.
    (src / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (src / "sub" / "tokenizer.json").write_text('{"version": "1.0"}\n')
    return src


@pytest.fixture(scope="module")
def age_keys(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("keys")
    keys = {}
    for name in ("right", "wrong"):
        subprocess.run(["age-keygen", "-o", str(folder / name)], check=True, capture_output=True)
        public = subprocess.run(["age-keygen", "-y", str(folder / name)], check=True, capture_output=True, text=True)
        keys[name] = {"identity": (folder / name).read_text(), "recipient": public.stdout.strip()}
    return keys


def publish(out: Path) -> Path:
    """What model_fetch leaves: the package's files plus a manifest of them."""
    files = [{"path": p.relative_to(out).as_posix(), "size": p.stat().st_size, "sha256": sha256(p), "git_sha1": None,
              "endpoint": "http://hub.invalid"} for p in sorted(out.rglob("*")) if p.is_file()]
    _manifest.write(str(out), _manifest.new("huggingface", "org/tiny", "main", "a" * 40, files))
    return out


def seal(model: Path, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(SEAL), str(model), str(out), *args], check=True, capture_output=True)
    return publish(out)


def unseal(run_module, package: Path, dest: Path, key: str, cipher: str = "age", check: bool = False) -> dict:
    return run_module("model_unseal", {"package": str(package), "dest": str(dest), "cipher": cipher, "key": key},
                      check_mode=check)


def assert_same_model(model: Path, dest: Path) -> None:
    for path in model.rglob("*"):
        if path.is_file():
            assert sha256(dest / path.relative_to(model)) == sha256(path), path
    recorded = _manifest.load(_manifest.manifest_path(str(dest)))
    expected = {"SHA256SUMS", "config.json", "model.safetensors", "sub/tokenizer.json"}
    assert {e["path"] for e in recorded["files"]} == expected
    assert recorded["commit"] == "a" * 40


def assert_nothing_promoted(dest: Path) -> None:
    assert not dest.exists()
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(".unseal-")]


@pytest.mark.parametrize("layout", ["archive", "per-file"])
def test_an_age_package_reaches_the_revision_folder_verified_and_a_rerun_changes_nothing(
        run_module, tmp_path, model, age_keys, layout):
    extra = ["--per-file"] if layout == "per-file" else []
    package = seal(model, tmp_path / "package", "--age-recipient", age_keys["right"]["recipient"], *extra)
    dest = tmp_path / "models" / ("a" * 40)
    dest.parent.mkdir()
    result = unseal(run_module, package, dest, age_keys["right"]["identity"])
    assert result["_rc"] == 0 and result["changed"], result
    assert_same_model(model, dest)
    assert result["files"] == 4 and sorted(result["restored"]) == sorted(
        ["SHA256SUMS", "config.json", "model.safetensors", "sub/tokenizer.json"])
    assert age_keys["right"]["identity"].split("\n")[-2] not in json.dumps(result)
    again = unseal(run_module, package, dest, age_keys["right"]["identity"])
    assert again["_rc"] == 0 and not again["changed"], again


def test_a_gpg_package_opens_with_its_passphrase_and_refuses_another(run_module, tmp_path, model):
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    package = seal(model, tmp_path / "package", "--gpg-passphrase-file", str(tmp_path / "pass"))
    dest = tmp_path / ("a" * 40)
    wrong = unseal(run_module, package, dest, "not the passphrase", cipher="gpg")
    assert wrong["_rc"] != 0 and "the key does not open tiny.tar.gpg" in wrong["msg"], wrong
    assert_nothing_promoted(dest)
    result = unseal(run_module, package, dest, PASSPHRASE, cipher="gpg")
    assert result["_rc"] == 0 and result["changed"], result
    assert_same_model(model, dest)
    assert PASSPHRASE not in json.dumps(result) + json.dumps(wrong)


def test_a_wrong_age_key_is_refused_with_nothing_promoted(run_module, tmp_path, model, age_keys):
    package = seal(model, tmp_path / "package", "--age-recipient", age_keys["right"]["recipient"])
    dest = tmp_path / ("a" * 40)
    result = unseal(run_module, package, dest, age_keys["wrong"]["identity"])
    assert result["_rc"] != 0, result
    assert "the key does not open tiny.tar.age" in result["msg"] and "no identity matched" in result["msg"]
    assert "model_weights_sealed_key" in result["msg"]
    assert_nothing_promoted(dest)


@pytest.mark.parametrize("cipher", ["age", "gpg"])
def test_a_flipped_byte_in_the_package_is_refused_with_nothing_promoted(run_module, tmp_path, model, age_keys, cipher):
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    key_args = (["--age-recipient", age_keys["right"]["recipient"]] if cipher == "age"
                else ["--gpg-passphrase-file", str(tmp_path / "pass")])
    out = tmp_path / "package"
    subprocess.run([sys.executable, str(SEAL), str(model), str(out), *key_args], check=True, capture_output=True)
    sealed = out / ("tiny.tar." + cipher)
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x01
    sealed.write_bytes(bytes(data))
    publish(out)  # the listing matches the altered bytes: only the cipher's authentication can catch it
    dest = tmp_path / ("a" * 40)
    key = age_keys["right"]["identity"] if cipher == "age" else PASSPHRASE
    result = unseal(run_module, out, dest, key, cipher=cipher)
    assert result["_rc"] != 0, result
    assert "could not be decrypted" in result["msg"] and "altered" in result["msg"], result["msg"]
    assert_nothing_promoted(dest)


def encrypt_tar(tmp_path: Path, recipient: str, members: list) -> Path:
    """A package whose archive holds exactly `members` ((TarInfo, bytes or None) pairs)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out = tmp_path / "package"
    out.mkdir()
    subprocess.run(["age", "-r", recipient, "-o", str(out / "tiny.tar.age")], input=buffer.getvalue(), check=True)
    return publish(out)


def file_info(name: str, data: bytes) -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_a_manifest_that_does_not_match_the_plaintext_is_refused(run_module, tmp_path, age_keys):
    sums = ("0" * 64 + "  config.json\n" + hashlib.sha256(b"x").hexdigest() + "  gone.bin\n").encode()
    package = encrypt_tar(tmp_path, age_keys["right"]["recipient"], [
        file_info("SHA256SUMS", sums), file_info("config.json", b"{}"), file_info("extra.bin", b"?")])
    dest = tmp_path / ("a" * 40)
    result = unseal(run_module, package, dest, age_keys["right"]["identity"])
    assert result["_rc"] != 0
    assert "1 missing: gone.bin" in result["msg"] and "1 different from their sha256: config.json" in result["msg"]
    assert "1 not listed: extra.bin" in result["msg"]
    assert_nothing_promoted(dest)


@pytest.mark.parametrize("hostile", ["link", "dotdot", "absolute", "no-manifest"])
def test_a_hostile_or_incomplete_archive_is_refused(run_module, tmp_path, age_keys, hostile):
    members = [file_info("SHA256SUMS", (hashlib.sha256(b"{}").hexdigest() + "  config.json\n").encode()),
               file_info("config.json", b"{}")]
    if hostile == "link":
        link = tarfile.TarInfo("weights")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        members.append((link, None))
    elif hostile == "dotdot":
        members.append(file_info("../escaped", b"x"))
    elif hostile == "absolute":
        members.append(file_info("/tmp/escaped", b"x"))
    else:
        members = members[1:]
    package = encrypt_tar(tmp_path, age_keys["right"]["recipient"], members)
    dest = tmp_path / "models" / ("a" * 40)
    dest.parent.mkdir()
    result = unseal(run_module, package, dest, age_keys["right"]["identity"])
    assert result["_rc"] != 0, result
    expected = {"link": "not a regular file or folder", "dotdot": "must be normalised",
                "absolute": "must be a relative POSIX path", "no-manifest": "holds no SHA256SUMS"}[hostile]
    assert expected in result["msg"], result["msg"]
    assert_nothing_promoted(dest)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_a_repair_puts_back_only_the_missing_files_and_check_mode_writes_nothing(run_module, tmp_path, model, age_keys):
    package = seal(model, tmp_path / "package", "--age-recipient", age_keys["right"]["recipient"])
    dest = tmp_path / ("a" * 40)
    planned = unseal(run_module, package, dest, age_keys["right"]["identity"], check=True)
    assert planned["_rc"] == 0 and planned["changed"] and not dest.exists(), planned
    assert unseal(run_module, package, dest, age_keys["right"]["identity"])["_rc"] == 0
    (dest / "model.safetensors").unlink()  # what model_verify's quarantine leaves
    kept = (dest / "config.json").stat().st_ino
    result = unseal(run_module, package, dest, age_keys["right"]["identity"])
    assert result["_rc"] == 0 and result["restored"] == ["model.safetensors"], result
    assert (dest / "config.json").stat().st_ino == kept
    assert_same_model(model, dest)
