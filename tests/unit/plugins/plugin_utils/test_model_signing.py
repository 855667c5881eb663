"""Signature verification against signatures made by the real OpenSSF model_signing library (key-based, P-256)."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import model_signing  # dev dependency (requirements-dev.txt): the reference signer
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from support.modeldir import build_model, make_ec_key, sign_model

from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing
from ansible_collections.autoglm.deploy.plugins.plugin_utils import _model_signing


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    base = tmp_path_factory.mktemp("signed")
    root = base / "model"
    build_model(root)
    private, public = make_ec_key(base / "keys")
    signature = sign_model(root, private)
    return root, signature, public


def node_hashes(root: Path) -> dict:
    files = {p.relative_to(root).as_posix(): str(p) for p in root.rglob("*")
             if p.is_file() and ".autoglm" not in p.parts and p.name != "model.sig"}
    results = _hashing.hash_files({path: (_hashing.SHA256,) for path in files.values()})
    return {rel: results[path] for rel, path in files.items()}


def key(path: Path):
    return _model_signing.load_public_key(path.read_bytes())


def test_good_signature_verifies_and_binds(signed):
    root, signature, public = signed
    statement = _model_signing.verify_bundle(signature.read_bytes(), key(public))
    hashes = node_hashes(root)
    assert statement["resources"] == {rel: value["sha256"] for rel, value in hashes.items()}
    assert ".autoglm" in statement["ignore_paths"]
    assert _model_signing.bind(statement, hashes) == []
    # The library that wrote the signature agrees it is good for this directory.
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=[".autoglm", "model.sig"])).verify(root, signature)


def test_tampered_file_does_not_bind(signed):
    root, signature, public = signed
    statement = _model_signing.verify_bundle(signature.read_bytes(), key(public))
    hashes = node_hashes(root)
    hashes["config.json"] = dict(hashes["config.json"], sha256="0" * 64)
    hashes["stray.bin"] = {"sha256": "1" * 64, "size": 1}
    del hashes["tokenizer_config.json"]
    assert _model_signing.bind(statement, hashes) == [
        "config.json: signed sha256 %s, the node has %s" % (statement["resources"]["config.json"], "0" * 64),
        "tokenizer_config.json: signed but not found on the node",
        "stray.bin: on the node but not covered by the signature",
    ]


def test_wrong_key_is_named(signed, tmp_path):
    _root, signature, _public = signed
    _other_private, other_public = make_ec_key(tmp_path, "other")
    with pytest.raises(_model_signing.SignatureError, match="signed with a different key"):
        _model_signing.verify_bundle(signature.read_bytes(), key(other_public))


def mutate(signature: Path, change) -> bytes:
    bundle = json.loads(signature.read_text())
    change(bundle)
    return json.dumps(bundle).encode()


def test_flipped_signature_bit_fails(signed):
    _root, signature, public = signed

    def flip(bundle):
        raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 1
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(_model_signing.SignatureError, match="does not verify"):
        _model_signing.verify_bundle(mutate(signature, flip), key(public))


def test_edited_statement_fails(signed):
    _root, signature, public = signed

    def edit(bundle):
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        payload["predicate"]["resources"][0]["digest"] = "0" * 64
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(_model_signing.SignatureError, match="does not verify"):
        _model_signing.verify_bundle(mutate(signature, edit), key(public))


def test_certificate_bundles_and_shard_serialization_are_refused(signed, tmp_path):
    root, signature, public = signed
    with pytest.raises(_model_signing.SignatureError, match="only key-based signatures"):
        _model_signing.verify_bundle(mutate(signature, lambda b: b["verificationMaterial"].update(certificate={})),
                                     key(public))
    private, public2 = make_ec_key(tmp_path, "shards")
    sharded = tmp_path / "sharded.sig"
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[".autoglm", "model.sig"]).use_shard_serialization()
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(hashing).sign(
        root, sharded)
    with pytest.raises(_model_signing.SignatureError, match="serialization method 'shards'"):
        _model_signing.verify_bundle(sharded.read_bytes(), key(public2))


def test_non_ec_or_garbage_keys_are_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(_model_signing.SignatureError, match="must be an ECDSA key"):
        _model_signing.load_public_key(pem)
    with pytest.raises(_model_signing.SignatureError, match="not a PEM public key"):
        _model_signing.load_public_key(b"hello")


def test_without_cryptography_a_signature_check_says_what_to_install(monkeypatch, signed):
    # The plugin imports without cryptography (ansible-test's import check); the check itself names the package.
    _unused, signature, public = signed
    monkeypatch.setattr(_model_signing, "CRYPTOGRAPHY_IMPORT_ERROR", ImportError("No module named 'cryptography'"))
    for call in (lambda: _model_signing.load_public_key(public.read_bytes()),
                 lambda: _model_signing.verify_bundle(signature.read_bytes(), None)):
        with pytest.raises(_model_signing.SignatureError, match=r"pip install cryptography"):
            call()
