#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_unseal
short_description: Decrypt a sealed model package (age or GPG) into a revision folder, checked against its manifest
version_added: "0.4.0"
description:
  - The node half of a model published sealed (the vendor's "apply for access, download the encrypted package,
    unpack it with the key"). O(package) is a folder M(autoglm.deploy.model_fetch) downloaded and
    M(autoglm.deploy.model_verify) checked, so the ciphertext is known to be what the hub lists.
  - Each file of the package is one of three kinds. An encrypted archive (C(*.tar.age), C(*.tar.gz.age),
    C(*.tgz.age), and the same with C(.gpg)) is decrypted and unpacked as one stream, so the plaintext archive
    never lands on disk; only regular files and folders at relative paths are unpacked. An encrypted file
    (C(*.age), C(*.gpg)) is decrypted to its name without that suffix. Any other file is copied as it is.
  - Every plaintext file is hashed while it is written and must match the package's own manifest
    (O(manifest_name), C(sha256sum) format, inside the package); a file missing, different or not listed fails
    the task. Only then is the revision promoted, by renaming a private staging folder to O(dest), and a
    C(.autoglm/manifest.json) is written for M(autoglm.deploy.model_verify) and later runs.
  - A wrong key, or a package altered after it was encrypted (age and GPG authenticate every chunk), fails the
    task with the tool's own words and leaves O(dest) as it was; nothing is promoted, the staging folder is removed.
  - When O(dest) exists already (a repair after model_verify quarantined bad files), the package is decrypted again
    and only the files O(dest) lacks are put back.
  - The key reaches the tool on its standard input and is never written to disk or logged.
options:
  package:
    description: The folder holding the sealed package, with the C(.autoglm/manifest.json) model_fetch wrote.
    type: path
    required: true
  dest:
    description: The revision folder to create (or, when it exists, to fill in).
    type: path
    required: true
  cipher:
    description:
      - C(age) (an X25519 identity, or several, as C(age-keygen) writes them) or C(gpg) (a symmetric passphrase,
        as C(gpg --symmetric) uses).
    type: str
    required: true
    choices: [age, gpg]
  key:
    description: The age identity text (C(AGE-SECRET-KEY-1...)) or the GPG passphrase.
    type: str
    required: true
  manifest_name:
    description: The plaintext's checksums file inside the package (C(sha256sum) format, relative paths).
    type: str
    default: SHA256SUMS
attributes:
  check_mode:
    support: full
    description: Reports whether O(dest) lacks files, without decrypting anything.
  diff_mode:
    support: none
    description: No diff; RV(restored) lists the files written.
requirements:
  - C(age) (Debian package C(age)) or C(gpg) (Debian package C(gnupg)) on the node.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Decrypt the sealed package into the revision folder
  autoglm.deploy.model_unseal:
    package: /srv/models/phone/.sealed/0123abcd
    dest: /srv/models/phone/0123abcd
    cipher: age
    key: "{{ vault_model_key }}"
"""

RETURN = r"""
restored:
  description: Plaintext files written into O(dest) (all of them for a new revision).
  type: list
  elements: str
  returned: always
files:
  description: Plaintext files the package holds.
  type: int
  returned: always
bytes:
  description: Plaintext bytes the package holds.
  type: int
  returned: always
"""

import hashlib
import os
import shutil
import tarfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest
from ansible_collections.autoglm.deploy.plugins.module_utils._decrypt import Decryption, DecryptionError, decrypt_argv, gnupg_home
from ansible_collections.autoglm.deploy.plugins.module_utils._verify import VerifyError, parse_checksums

CHUNK = 8 * 1024 * 1024  # read and hash size
SUFFIXES = {"age": (".age",), "gpg": (".gpg", ".pgp")}
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
# Files of the plaintext that its own manifest need not list.
UNLISTED = ("model.sig",)
TOOLS = {"age": ("age", "age"), "gpg": ("gpg", "gnupg")}


class UnsealError(Exception):
    pass


def kind_of(name: str, cipher: str):
    """('archive' | 'file' | 'plain', plaintext name) of one file of the package."""
    for suffix in SUFFIXES[cipher]:
        if name.endswith(suffix):
            plain = name[: -len(suffix)]
            kind = "archive" if plain.endswith(ARCHIVES) else "file"
            return kind, plain
    return "plain", name


class Staging:
    """A private folder (0700) the plaintext is written into, every file hashed on the way."""

    def __init__(self, root: str):
        self.root = root
        self.files = {}  # relpath -> {"size", "sha256", "from"}
        os.mkdir(root, 0o700)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def write(self, rel: str, source, origin: str) -> None:
        try:
            rel = _manifest.check_relpath(rel, "a path in %s," % origin)
        except _manifest.ManifestError as exc:
            raise UnsealError(str(exc)) from exc
        if rel in self.files:
            raise UnsealError("%s holds %s a second time: a package lists each file once" % (origin, rel))
        target = self.path(rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with open(target, "xb") as out:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(target, 0o644)
        self.files[rel] = {"size": size, "sha256": digest.hexdigest(), "from": origin}

    def unpack(self, stream, origin: str) -> None:
        """Regular files and folders of a tar stream; anything else (links, devices) is refused."""
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                if member.isdir():
                    if name not in ("", "."):
                        try:
                            _manifest.check_relpath(name.rstrip("/"), "a folder in %s," % origin)
                        except _manifest.ManifestError as exc:
                            raise UnsealError(str(exc)) from exc
                        os.makedirs(self.path(name), mode=0o755, exist_ok=True)
                    continue
                if not member.isfile():
                    raise UnsealError("%s holds %s, which is not a regular file or folder (a link or a device): "
                                      "only files and folders are unpacked" % (origin, name))
                self.write(name, tar.extractfile(member), origin)


def check_against_manifest(staging: Staging, manifest_name: str, package: str) -> None:
    if manifest_name not in staging.files:
        raise UnsealError(
            "the package %s holds no %s once decrypted, so its plaintext cannot be verified: ask the publisher for "
            "the checksums file (sha256sum format), or set model_weights_sealed_manifest to the name it has"
            % (package, manifest_name))
    with open(staging.path(manifest_name), encoding="utf-8", errors="replace") as handle:
        try:
            expected = parse_checksums(handle.read(), manifest_name)
        except VerifyError as exc:
            raise UnsealError(str(exc)) from exc
    missing = sorted(set(expected) - set(staging.files))
    wrong = sorted(rel for rel in expected if rel in staging.files
                   and staging.files[rel]["sha256"] != expected[rel]["sha256"])
    unlisted = sorted(set(staging.files) - set(expected) - {manifest_name} - set(UNLISTED))
    problems = [(label, names) for label, names in (("missing", missing), ("different from their sha256", wrong),
                                                    ("not listed", unlisted)) if names]
    if problems:
        raise UnsealError(
            "the decrypted package does not match its %s (%s): nothing was promoted; ask the publisher for a package "
            "whose manifest lists exactly its files"
            % (manifest_name, "; ".join("%d %s: %s" % (len(names), label, ", ".join(names[:5]))
                                        for label, names in problems)))


def unseal_file(staging: Staging, name: str, source: str, cipher: str, tool: str, home: str, key: str) -> None:
    """One file of the package into staging: unpacked (an encrypted archive), decrypted, or copied as it is."""
    kind, plain = kind_of(name, cipher)
    if kind == "plain":
        with open(source, "rb") as handle:
            staging.write(name, handle, name)
        return
    decryption = Decryption(decrypt_argv(cipher, tool, source, home), key, cipher, name)
    try:
        if kind == "archive":
            staging.unpack(decryption.stdout, name)
        else:
            staging.write(plain, decryption.stdout, name)
    except (tarfile.TarError, OSError, EOFError, UnsealError) as exc:
        decryption.finish(exc)  # raises: the tool's verdict if it failed, else what went wrong here
    else:
        decryption.finish()


def missing_in(dest: str, rels) -> list:
    return sorted(rel for rel in rels if not os.path.lexists(os.path.join(dest, rel)))


def unseal(module, params: dict) -> dict:
    package, dest, cipher = os.path.abspath(params["package"]), os.path.abspath(params["dest"]), params["cipher"]
    if not params["key"].strip():
        raise UnsealError("key is empty: set model_weights_sealed_key (from the vault) to the package's %s key" % cipher)
    try:
        sealed = _manifest.load(_manifest.manifest_path(package))
    except _manifest.ManifestError as exc:
        raise UnsealError("the sealed package is not downloaded: %s" % exc) from exc
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise UnsealError("dest %s exists and is not a folder: move it away" % dest)
    have_manifest = os.path.isfile(_manifest.manifest_path(dest))
    if have_manifest:
        recorded = _manifest.load(_manifest.manifest_path(dest))["files"]
        if not missing_in(dest, [entry["path"] for entry in recorded]):
            return {"changed": False, "restored": [], "files": len(recorded),
                    "bytes": sum(entry["size"] for entry in recorded)}
    if module.check_mode:
        return {"changed": True, "restored": [], "files": 0, "bytes": 0}

    tool_name, debian_package = TOOLS[cipher]
    tool = module.get_bin_path(tool_name)
    if not tool:
        raise UnsealError("%s is not installed on this node: install the Debian package %s (the model_weights role "
                          "does when model_weights_sealed is %s)" % (tool_name, debian_package, cipher))
    staging_root = os.path.join(os.path.dirname(dest), ".unseal-" + os.path.basename(dest))
    # An interrupted earlier run's half-written plaintext: never promoted, decrypted again.
    shutil.rmtree(staging_root, ignore_errors=True)
    staging = Staging(staging_root)
    try:
        with gnupg_home(cipher) as home:
            for entry in sealed["files"]:
                unseal_file(staging, entry["path"], os.path.join(package, entry["path"]), cipher, tool, home,
                            params["key"])
        check_against_manifest(staging, params["manifest_name"], package)
        endpoints = {entry["path"]: entry["endpoint"] for entry in sealed["files"]}
        plaintext = _manifest.new(
            sealed["source"], sealed["repo_id"], sealed["revision"], sealed["commit"],
            [{"path": rel, "size": info["size"], "sha256": info["sha256"], "git_sha1": None,
              "endpoint": endpoints[info["from"]]} for rel, info in staging.files.items()])
        if not os.path.isdir(dest):
            _manifest.write(staging.root, plaintext)
            os.chmod(staging.root, 0o755)
            os.rename(staging.root, dest)
            restored = sorted(staging.files)
        else:
            restored = missing_in(dest, staging.files)
            for rel in restored:
                os.makedirs(os.path.dirname(os.path.join(dest, rel)), mode=0o755, exist_ok=True)
                os.rename(staging.path(rel), os.path.join(dest, rel))
            if not have_manifest:
                _manifest.write(dest, plaintext)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return {"changed": True, "restored": restored, "files": len(staging.files),
            "bytes": sum(info["size"] for info in staging.files.values())}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "package": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "cipher": {"type": "str", "required": True, "choices": ["age", "gpg"]},
            "key": {"type": "str", "required": True, "no_log": True},
            "manifest_name": {"type": "str", "default": "SHA256SUMS"},
        },
        supports_check_mode=True,
    )
    try:
        result = unseal(module, module.params)
    except (UnsealError, DecryptionError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="could not unseal into %s: %s" % (module.params["dest"], exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
