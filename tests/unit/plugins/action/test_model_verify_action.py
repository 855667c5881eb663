"""The model_verify action end to end: a real ansible-playbook run on localhost, signatures from model_signing."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from support.modeldir import SHARDS, build_model, make_ec_key, sign_model
from support.playbook import run_local_playbook

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return make_ec_key(base, "publisher"), make_ec_key(base, "stranger")


@pytest.fixture
def model(tmp_path, keys):
    root = tmp_path / "model"
    build_model(root)
    sign_model(root, keys[0][0])
    return root


def play(tmp_path: Path, args: dict, check: bool = False) -> dict:
    """Run one model_verify task on localhost; return its result as the json callback reports it."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                     "tasks": [{"name": "Verify the model", "autoglm.deploy.model_verify": args}]}]))
    rc, report, raw = run_local_playbook(playbook, tmp_path, check=check, timeout=180)
    if report is None:
        raise AssertionError("no JSON report (rc=%d): %s" % (rc, raw))
    result = report["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert bool(result.get("failed")) == (rc != 0)
    return result


def test_good_signature_passes(tmp_path, model, keys):
    result = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1])})
    assert not result.get("failed"), result.get("msg")
    assert result["signature"] == {"status": "verified", "path": str(model / "model.sig"), "signed_files": 7}
    assert "content_b64" not in json.dumps(result)
    assert result["changed"] is False


def test_wrong_key_fails(tmp_path, model, keys):
    result = play(tmp_path, {"path": str(model), "public_key": str(keys[1][1])})
    assert result["failed"] and "signed with a different key" in result["msg"]
    assert result["signature"]["status"] == "invalid"


def test_bad_signature_fails(tmp_path, model, keys):
    bundle = json.loads((model / "model.sig").read_text())
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    (model / "model.sig").write_text(json.dumps(bundle))
    result = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1])})
    assert result["failed"] and "does not verify" in result["msg"]


def test_file_tampered_with_manifest_to_match_is_caught_by_the_signature(tmp_path, model, keys):
    # An attacker who can rewrite files can rewrite the manifest too: only the signature catches it.
    shard = model / SHARDS[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    manifest = json.loads((model / ".autoglm" / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == SHARDS[0]:
            entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (model / ".autoglm" / "manifest.json").write_text(json.dumps(manifest))
    (model / "added.py").write_text("print('hi')\n")
    result = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1])})
    assert result["failed"] and result["signature"]["status"] == "mismatch"
    assert result["signature_problems"][0].startswith("%s: signed sha256 " % SHARDS[0])
    assert "added.py: on the node but not covered by the signature" in result["signature_problems"]


def test_unsigned_needs_allow_unsigned(tmp_path, model, keys):
    (model / "model.sig").unlink()
    refused = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1])})
    assert refused["failed"] and "no signature at" in refused["msg"]
    allowed = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1]), "allow_unsigned": True})
    assert not allowed.get("failed") and allowed["signature"]["status"] == "unsigned"
    no_key = play(tmp_path, {"path": str(model)})
    assert no_key["failed"] and "needs public_key" in no_key["msg"]


def test_signature_elsewhere_and_check_mode_writes_nothing(tmp_path, model, keys):
    elsewhere = tmp_path / "sigs" / "model.sig"
    elsewhere.parent.mkdir()
    shutil.move(str(model / "model.sig"), str(elsewhere))
    result = play(tmp_path, {"path": str(model), "public_key": str(keys[0][1]), "signature": str(elsewhere)},
                  check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["signature"]["status"] == "verified"
    assert not (model / ".autoglm" / "verify-cache.json").exists()
