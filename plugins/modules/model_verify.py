#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_verify
short_description: Verify model weights on disk - sizes, sha256 and git blob ids, safetensors structure, signature
version_added: "0.1.0"
description:
  - Checks a model directory against what it should hold, the manifest M(autoglm.deploy.model_fetch) wrote
    (C(<path>/.autoglm/manifest.json)), a C(sha256sum)-format checksums file, or an inline mapping.
  - Every expected file must be present with the expected size and hash, sha256 for LFS-style files, the git
    blob sha1 (what C(git hash-object) prints) for small files kept in git upstream.
  - Safetensors files must be structurally sound (header parses, every tensor's bytes lie inside the file and
    match its dtype and shape) and every C(*.safetensors.index.json) must name shards that exist and hold
    the tensors it lists.
  - Files are hashed in parallel (one thread per core, large reads). A cache in C(.autoglm/verify-cache.json)
    keyed on size, mtime, ctime, inode and device lets a rerun over unchanged files skip hashing; ctime and
    inode change whenever content is replaced, even when the mtime is put back.
  - Refuses to verify a directory holding symlinks that lead outside it.
  - With O(quarantine=true) bad files are moved to C(.autoglm/quarantine/<UTC timestamp>/<path>) so that the
    next fetch downloads exactly those again. The task still fails, because the model is not complete.
  - An action plugin runs this module on the node, then checks the detached signature (OpenSSF model-signing
    format, key-based) on the controller against the hashes the node computed.
    Writing the cache does not count as a change; only quarantining does.
options:
  path:
    description: The model directory.
    type: path
    required: true
  expected_from:
    description:
      - Where the expected files come from.
      - C(manifest) reads O(manifest); C(checksums) reads O(checksums_file); C(inline) uses O(files).
    type: str
    default: manifest
    choices: [manifest, checksums, inline]
  manifest:
    description: Manifest to check against; C(<path>/.autoglm/manifest.json) when unset.
    type: path
  checksums_file:
    description:
      - A C(sha256sum) output file (C(<sha256>  <relative path>) per line); relative to O(path) unless absolute.
      - Sizes are not known from it, so only hashes are compared.
    type: path
  files:
    description:
      - Inline expected files, relative path -> C({size, sha256}) or C({size, git_sha1}); C(size) is optional.
    type: dict
  mode:
    description:
      - C(cached) trusts the cache for files whose size, mtime, ctime, inode and device are unchanged.
      - C(full) hashes every file again (and refreshes the cache).
    type: str
    default: cached
    choices: [cached, full]
  extra_files:
    description: What to do about files on disk that are not expected.
    type: str
    default: report
    choices: [ignore, report, fail]
  ignore_paths:
    description:
      - Relative paths (files or directories) never counted as extra files. C(.autoglm/) is always ignored.
    type: list
    elements: str
    default: [.cache/huggingface]
  quarantine:
    description: Move files that fail a check into C(.autoglm/quarantine/<UTC timestamp>/).
    type: bool
    default: false
  safetensors:
    description: Check the structure of C(*.safetensors) files and their index.
    type: bool
    default: true
  hash_extra_files:
    description:
      - Hash extra files too and return their sha256 in RV(files).
      - Turned on by itself when O(public_key) is set, so every file on disk can be bound to the signature.
    type: bool
    default: false
  jobs:
    description: Files hashed at once; C(0) means one per CPU core.
    type: int
    default: 0
  signature:
    description:
      - Detached signature on the node (a sigstore bundle as written by the OpenSSF C(model_signing) tool).
      - When unset, C(<path>/model.sig) is used if it exists. The signature file is never an extra file.
    type: path
  public_key:
    description:
      - PEM public key on the B(controller) (ECDSA P-256/P-384/P-521) the signature must verify with.
      - Every file the signature lists must have the digest the node computed, and every file on disk must be
        listed (or under a path the signed statement itself ignores).
    type: path
  allow_unsigned:
    description:
      - Pass without a signature check when there is no O(public_key) or no signature file.
      - When false, a missing key or signature fails the task. A O(signature) named explicitly must exist.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Verifies the same way but writes nothing, not even the cache; reports what it would quarantine.
  diff_mode:
    support: none
    description: No diff; RV(quarantined) lists the files moved aside (or that would be, in check mode).
  action:
    support: full
    description: The signature is checked on the controller by the action plugin of the same name.
requirements:
  - C(cryptography) on the controller, for O(public_key) (a dependency of ansible-core; the collection's C(requirements.txt)
    lists it). The node needs only the Python standard library.
notes:
  - Only the Python standard library runs on the node; the signature is checked on the controller, with the
    C(cryptography) package that ansible-core already needs.
  - Sigstore keyless and certificate bundles are refused; they cannot be verified offline by this plugin.
seealso:
  - name: OpenSSF model signing
    description: The signature format (in-toto statement in a DSSE envelope in a sigstore bundle).
    link: https://github.com/sigstore/model-transparency
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Verify the weights against the manifest model_fetch wrote, and the publisher's signature
  autoglm.deploy.model_verify:
    path: /srv/models/AutoGLM-Phone-9B/0123abcd
    public_key: files/autoglm-signing.pub

- name: Verify, moving corrupted files aside so the next fetch repairs only them
  autoglm.deploy.model_verify:
    path: /srv/models/AutoGLM-Phone-9B/0123abcd
    quarantine: true
    allow_unsigned: true
  register: __model_weights_verify

- name: Verify against a sha256sum file, failing on stray files
  autoglm.deploy.model_verify:
    path: /srv/models/custom
    expected_from: checksums
    checksums_file: SHA256SUMS
    extra_files: fail
    allow_unsigned: true
"""

RETURN = r"""
verified:
  description: Expected files that passed every check.
  returned: always
  type: list
  elements: str
mismatched:
  description: Files whose size or hash differs, or that could not be read.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Relative path., type: str}
    reason: {description: "size, sha256, git_sha1 or unreadable.", type: str}
    expected: {description: Expected size or hash., type: raw}
    actual: {description: What is on disk., type: raw}
missing:
  description: Expected files not on disk.
  returned: always
  type: list
  elements: str
extra:
  description: Files on disk that are not expected (outside O(ignore_paths) and C(.autoglm/)).
  returned: always
  type: list
  elements: str
safetensors_errors:
  description: Structural problems of safetensors files and index files.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: The file at fault., type: str}
    error: {description: What is wrong., type: str}
quarantined:
  description: Files moved aside (in check mode, the files that would be).
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Relative path in the model directory., type: str}
    to: {description: Where it was moved., type: str}
files:
  description: The size and hashes of every file checked (relative path -> C({size, sha256[, git_sha1]})).
  returned: always
  type: dict
stats:
  description: Files hashed, files taken from the cache, bytes hashed, seconds, threads.
  returned: always
  type: dict
signature:
  description: Outcome of the signature check, set by the action plugin.
  returned: always
  type: dict
  contains:
    status: {description: "verified, unsigned (allowed) or not_checked (no key, allowed).", type: str}
    path: {description: The signature file on the node., type: str}
    signed_files: {description: Files the signature lists., type: int}
"""

import base64
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest, _verify


def expected_files(module: AnsibleModule) -> dict:
    params = module.params
    source = params["expected_from"]
    if source == "manifest":
        return _verify.from_manifest(params["manifest"] or _manifest.manifest_path(params["path"]))
    if source == "checksums":
        if not params["checksums_file"]:
            raise _verify.VerifyError("expected_from=checksums needs checksums_file")
        path = os.path.join(params["path"], params["checksums_file"])
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _verify.VerifyError("cannot read checksums_file %s: %s" % (path, exc)) from exc
        return _verify.parse_checksums(text, path)
    if not params["files"]:
        raise _verify.VerifyError("expected_from=inline needs files (relative path -> {size, sha256 or git_sha1})")
    return _verify.normalise_inline(params["files"])


def failure_message(root: str, result: dict, extra_fails: bool) -> str:
    lines = []
    for item in result["mismatched"]:
        lines.append("%s: %s expected %s, got %s" % (item["path"], item["reason"], item["expected"], item["actual"]))
    lines += ["%s: missing" % rel for rel in result["missing"]]
    lines += ["%s: %s" % (item["path"], item["error"]) for item in result["safetensors_errors"]]
    if extra_fails:
        lines += ["%s: not expected (extra_files=fail)" % rel for rel in result["extra"]]
    moved = " %d file(s) moved to quarantine; fetch again to repair them." % len(result["quarantined"]) \
        if result["quarantined"] else ""
    return "Model in %s failed verification (%d problem(s)):%s\n%s" % (root, len(lines), moved, "\n".join(lines))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            expected_from=dict(type="str", default="manifest", choices=["manifest", "checksums", "inline"]),
            manifest=dict(type="path"),
            checksums_file=dict(type="path"),
            files=dict(type="dict"),
            mode=dict(type="str", default="cached", choices=["cached", "full"]),
            extra_files=dict(type="str", default="report", choices=["ignore", "report", "fail"]),
            ignore_paths=dict(type="list", elements="str", default=[".cache/huggingface"]),
            quarantine=dict(type="bool", default=False),
            safetensors=dict(type="bool", default=True),
            hash_extra_files=dict(type="bool", default=False),
            jobs=dict(type="int", default=0),
            signature=dict(type="path"),
            public_key=dict(type="path"),
            allow_unsigned=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    root = params["path"].rstrip("/") or "/"
    signature_path = params["signature"] or os.path.join(root, "model.sig")
    exclude = []
    real_root, real_signature = os.path.realpath(root), os.path.realpath(signature_path)
    if real_signature.startswith(real_root.rstrip("/") + "/"):
        exclude.append(os.path.relpath(real_signature, real_root))
    try:
        if params["jobs"] < 0:
            raise _verify.VerifyError("jobs must be 0 (one per core) or more, got %d" % params["jobs"])
        verifier = _verify.Verifier(
            root, expected_files(module), mode=params["mode"], extra_files=params["extra_files"],
            ignore_paths=params["ignore_paths"], quarantine=params["quarantine"], safetensors=params["safetensors"],
            hash_extra_files=params["hash_extra_files"] or bool(params["public_key"]), jobs=params["jobs"],
            check_mode=module.check_mode, exclude=exclude)
        result = verifier.run()
        signature = _verify.read_signature(signature_path)
    except _verify.VerifyError as exc:
        module.fail_json(msg=str(exc))
    result["extra"] = [] if params["extra_files"] == "ignore" else result["extra"]
    result["signature"] = {"path": signature_path, "found": signature is not None, "explicit": bool(params["signature"])}
    if signature is not None:
        # Carried to the action plugin, which removes it before the result is shown.
        result["signature"]["content_b64"] = base64.b64encode(signature).decode("ascii")
    result["changed"] = bool(result["quarantined"])
    extra_fails = params["extra_files"] == "fail" and bool(result["extra"])
    if result["mismatched"] or result["missing"] or result["safetensors_errors"] or extra_fails:
        module.fail_json(msg=failure_message(root, result, extra_fails), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
