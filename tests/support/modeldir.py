"""A small model directory for model_verify tests: real safetensors shards, an index, git-kept files, a manifest.

    from support.modeldir import build_model, sign_model, make_ec_key
    manifest = build_model(tmp_path / "model")      # writes files + .autoglm/manifest.json

sha256 of weights is computed with hashlib; the git blob ids of the small files come from the
real `git hash-object`, so the module under test is compared with independent references.
Signatures are made with the real OpenSSF `model_signing` library (a dev dependency).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

SHARDS = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
GIT_FILES = ["config.json", "tokenizer_config.json", "tokenizer/special_tokens_map.json"]
ENDPOINT = "http://127.0.0.1:8999"


def git_hash_object(path: Path) -> str:
    git = shutil.which("git")
    assert git, "the git binary is needed to compute reference blob ids"
    return subprocess.run([git, "hash-object", "--no-filters", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def _tensors(shard: int) -> dict:
    rng = np.random.default_rng(shard)
    # Shards 1 and 2 hold the same shapes (same file size), so swapping them changes only hashes.
    if shard in (1, 2):
        return {"layers.%d.weight" % shard: rng.standard_normal((256, 128), dtype=np.float32),
                "layers.%d.bias" % shard: rng.standard_normal((128,), dtype=np.float32)}
    return {"lm_head.weight": rng.standard_normal((64, 96)).astype(np.float16),
            "norm.weight": np.ones((96,), dtype=np.float32), "step": np.array([7], dtype=np.int64)}


def build_model(root: Path, write_manifest: bool = True) -> dict:
    """Write the model under `root`; return its manifest (also written to .autoglm/manifest.json)."""
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for index, name in enumerate(SHARDS, 1):
        tensors = _tensors(index)
        save_file(tensors, str(root / name), metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in tensors})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                   "weight_map": weight_map}, indent=2))
    (root / "config.json").write_text(json.dumps({"model_type": "glm4v", "hidden_size": 128}, indent=2) + "\n")
    (root / "tokenizer_config.json").write_text('{"model_max_length": 25480}\n')
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "special_tokens_map.json").write_text('{"eos_token": "</s>"}\n')
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".autoglm" not in p.parts):
        rel = path.relative_to(root).as_posix()
        git_kept = rel in GIT_FILES
        files.append({"path": rel, "size": path.stat().st_size, "endpoint": ENDPOINT,
                      "sha256": None if git_kept else hashlib.sha256(path.read_bytes()).hexdigest(),
                      "git_sha1": git_hash_object(path) if git_kept else None})
    manifest = _manifest.new("huggingface", "zai-org/AutoGLM-Phone-9B", "main", "c0ffee" * 6 + "abcd", files)
    if write_manifest:
        _manifest.write(str(root), manifest)
    return manifest


def make_ec_key(directory: Path, name: str = "signing") -> tuple:
    """A fresh P-256 key pair as PEM files: (private path, public path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / (name + ".key")
    public = directory / (name + ".pub")
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_model(root: Path, private_key: Path, signature: Path | None = None) -> Path:
    """Sign `root` with model_signing's key signer, ignoring our .autoglm/ state; returns the signature path."""
    import model_signing

    signature = signature or root / "model.sig"
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[".autoglm", signature.name])
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(hashing).sign(root, signature)
    return signature
