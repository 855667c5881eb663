# SPDX-License-Identifier: Apache-2.0
"""The controller half of shipping a Python package to nodes in one piece (the node half: code_tree)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: code_archive
short_description: A package folder of the controller as one reproducible archive, for autoglm.deploy.code_tree
version_added: "0.1.0"
description:
  - Packs the files of a folder on the controller that match O(patterns) (top level and sub-folders, never
    C(__pycache__)) into one gzip'd tar, sorted, with owner, mode and time zeroed, so the same code always
    gives the same bytes, and returns it base64-encoded with its SHA-256 and its file list.
  - Hand the result to M(autoglm.deploy.code_tree) as its O(autoglm.deploy.code_tree#module:archive), so the
    code reaches the node in the module's one call instead of one copy per file.
options:
  _terms:
    description: The folder to pack (one).
    required: true
  patterns:
    description: Shell patterns of the file names to include.
    type: list
    elements: str
    default: ["*.py"]
"""

EXAMPLES = r"""
- name: Install the server's code
  autoglm.deploy.code_tree:
    dest: /opt/autoglm/serve/autoglm_serve
    archive: "{{ lookup('autoglm.deploy.code_archive', role_path ~ '/../../server/autoglm_serve') }}"
"""

RETURN = r"""
_raw:
  description: One mapping with C(data) (the archive, base64), C(sha256) and C(files) (relative paths, sorted).
  type: list
  elements: dict
"""

import base64
import fnmatch
import gzip
import hashlib
import io
import os
import tarfile

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase


def pack(folder: str, patterns: list) -> dict:
    """The deterministic archive of `folder` (see DOCUMENTATION)."""
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                paths.append(os.path.relpath(os.path.join(root, name), folder))
    if not paths:
        raise AnsibleLookupError("code_archive: %s holds no file matching %s" % (folder, ", ".join(patterns)))
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too: identical code, identical bytes.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relpath in sorted(paths):
            with open(os.path.join(folder, relpath), "rb") as handle:
                data = handle.read()
            info = tarfile.TarInfo(relpath)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return {"data": base64.b64encode(raw).decode("ascii"), "sha256": hashlib.sha256(raw).hexdigest(),
            "files": sorted(paths)}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if len(terms) != 1:
            raise AnsibleLookupError("code_archive takes one folder, got %d" % len(terms))
        folder = str(terms[0])
        if not os.path.isdir(folder):
            raise AnsibleLookupError("code_archive: %s is not a folder on the controller" % folder)
        return [pack(folder, list(self.get_option("patterns")))]
