# SPDX-License-Identifier: Apache-2.0
"""Verify an OpenSSF model-signing signature (key-based) and bind it to hashes computed elsewhere.

Runs on the controller (the action plugin of model_verify); needs `cryptography`, which
ansible-core itself depends on, and not the model_signing package.

The format, as written by model_signing 1.x (`model_signing sign key`, `signing.Config()
.use_elliptic_key_signer()`), is a sigstore bundle (JSON, mediaType
application/vnd.dev.sigstore.bundle.v0.3+json) whose `dsseEnvelope` carries:
  payloadType  application/vnd.in-toto+json
  payload      base64 of an in-toto Statement v1:
               subject[0] = {name: model name, digest: {sha256: sha256 over the concatenated raw
                             resource digests, in the order listed}}
               predicateType https://model_signing/signature/v1.0
               predicate = {serialization: {method: "files", hash_type: "sha256",
                                            ignore_paths: [...], allow_symlinks: bool},
                            resources: [{name: relative path, algorithm: sha256, digest: hex}]}
  signatures   [{sig: base64 DER ECDSA signature over PAE(payloadType, payload), keyid}]
PAE is DSSE v1's pre-authentication encoding:
  b"DSSEv1 " + len(type) + b" " + type + b" " + len(payload) + b" " + payload.
verificationMaterial.publicKey.hint is the hex sha256 of the signer's public key in PEM
(SubjectPublicKeyInfo); it tells "signed with another key" from "signature broken".
The ECDSA hash follows the curve: P-256/SHA-256, P-384/SHA-384, P-521/SHA-512.

Not handled (refused with a message saying so): certificate and sigstore keyless bundles
(they need a trust root and transparency-log proofs), shard serialization, non-sha256 hashes,
and the pre-1.0 "Digests/v0.1" predicate.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json

try:  # a dependency of ansible-core, and declared in the collection's requirements.txt
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
except ImportError as exc:  # only a signature check needs it: say so then, not at import
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

BUNDLE_MEDIA_PREFIX = "application/vnd.dev.sigstore.bundle"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_CURVE_HASH = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}  # names in cryptography's hashes


class SignatureError(Exception):
    """The signature is unusable, does not verify, or does not match the model."""


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _need_cryptography() -> None:
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise SignatureError("checking a model signature needs the Python package cryptography in the Python that "
                             "runs Ansible on the controller (pip install cryptography): %s" % CRYPTOGRAPHY_IMPORT_ERROR)


def load_public_key(pem: bytes, where: str = "public key"):
    _need_cryptography()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError("%s is not a PEM public key: %s" % (where, exc)) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_HASH:
        raise SignatureError("%s must be an ECDSA key on P-256, P-384 or P-521 (what model_signing's key signer "
                             "uses), got %s" % (where, getattr(getattr(key, "curve", None), "name", type(key).__name__)))
    return key


def key_hint(key) -> str:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _b64(value, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (TypeError, binascii.Error) as exc:
        raise SignatureError("%s is not valid base64" % what) from exc


def verify_bundle(bundle_bytes: bytes, key) -> dict:
    """Check the bundle's signature with `key`; return the signed statement's contents.

    Returns {"model_name", "resources": {relpath: sha256 hex}, "ignore_paths": [...]}.
    """
    _need_cryptography()
    try:
        bundle = json.loads(bundle_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError("the signature file is not a JSON sigstore bundle: %s" % exc) from exc
    if not isinstance(bundle, dict) or not str(bundle.get("mediaType", "")).startswith(BUNDLE_MEDIA_PREFIX):
        raise SignatureError("the signature file is not a sigstore bundle (mediaType %r)"
                             % (bundle.get("mediaType") if isinstance(bundle, dict) else None))
    material = bundle.get("verificationMaterial") or {}
    if "certificate" in material or "x509CertificateChain" in material:
        raise SignatureError("the signature was made with a certificate (sigstore keyless or certificate signing); "
                             "only key-based signatures (model_signing sign key) can be verified offline here")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise SignatureError("the bundle has no dsseEnvelope (message signatures are not model signatures)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError("DSSE payloadType is %r, expected %r" % (envelope.get("payloadType"), PAYLOAD_TYPE))
    payload = _b64(envelope.get("payload"), "DSSE payload")
    signatures = envelope.get("signatures") or []
    message = pae(PAYLOAD_TYPE, payload)
    algorithm = ec.ECDSA(getattr(hashes, _CURVE_HASH[key.curve.name])())
    for entry in signatures:
        try:
            key.verify(_b64(entry.get("sig"), "DSSE signature"), message, algorithm)
            break
        except (InvalidSignature, AttributeError):
            continue
    else:
        hint = (material.get("publicKey") or {}).get("hint")
        if hint and hint != key_hint(key):
            raise SignatureError("the model was signed with a different key (bundle key hint %s, public_key %s)"
                                 % (hint, key_hint(key)))
        raise SignatureError("the signature does not verify with public_key: the signature or the signed "
                             "statement was altered")
    return parse_statement(payload)


def parse_statement(payload: bytes) -> dict:
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError("the signed payload is not JSON: %s" % exc) from exc
    if statement.get("_type") != STATEMENT_TYPE:
        raise SignatureError("signed payload is not an in-toto %s statement" % STATEMENT_TYPE)
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError("predicateType %r is not supported (expected %s)"
                             % (statement.get("predicateType"), PREDICATE_TYPE))
    predicate = statement.get("predicate") or {}
    serialization_args = predicate.get("serialization") or {}
    if serialization_args.get("method") != "files" or serialization_args.get("hash_type") != "sha256":
        raise SignatureError("the model was signed with serialization method %r / hash %r; only per-file sha256 "
                             "(model_signing's default) can be bound to the node's hashes"
                             % (serialization_args.get("method"), serialization_args.get("hash_type")))
    subjects = statement.get("subject") or []
    if len(subjects) != 1:
        raise SignatureError("expected one subject in the statement, got %d" % len(subjects))
    resources, root = {}, hashlib.sha256()
    for item in predicate.get("resources") or []:
        name, digest = item.get("name"), str(item.get("digest", ""))
        if item.get("algorithm") != "sha256" or len(digest) != 64:
            raise SignatureError("resource %r is not a sha256 digest" % name)
        try:
            root.update(bytes.fromhex(digest))
        except ValueError as exc:
            raise SignatureError("resource %r digest is not hex" % name) from exc
        resources[name] = digest.lower()
    if root.hexdigest() != (subjects[0].get("digest") or {}).get("sha256"):
        raise SignatureError("the statement is inconsistent: its resources do not hash to the subject digest")
    return {"model_name": subjects[0].get("name"), "resources": resources,
            "ignore_paths": [str(path).strip("/") for path in serialization_args.get("ignore_paths") or []]}


def bind(signed: dict, node_files: dict) -> list:
    """Problems between the signed digests and the node's {relpath: {"sha256": hex}}; empty when bound."""
    problems = []
    for name, digest in sorted(signed["resources"].items()):
        node = node_files.get(name)
        if node is None:
            problems.append("%s: signed but not found on the node" % name)
        elif node.get("sha256") != digest:
            problems.append("%s: signed sha256 %s, the node has %s" % (name, digest, node.get("sha256")))
    ignored = signed["ignore_paths"]
    for name in sorted(node_files):
        if name not in signed["resources"] and not any(name == path or name.startswith(path + "/") for path in ignored):
            problems.append("%s: on the node but not covered by the signature" % name)
    return problems
