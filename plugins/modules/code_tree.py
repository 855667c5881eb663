#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: code_tree
short_description: Make a folder hold exactly the files of one archive (a Python package shipped in one piece)
version_added: "0.1.0"
description:
  - The node half of shipping code. O(archive) comes from the P(autoglm.deploy.code_archive#lookup) lookup on the
    controller, so the whole package reaches the node in this module's one call instead of one copy per file.
  - Every file of the archive is compared with the file in O(dest) (content, owner, group, mode) and written
    atomically where it differs; a file or folder in O(dest) that the archive does not hold is removed (a module
    dropped from the package must not stay importable), and so are C(__pycache__) folders once anything changed.
  - O(dest) belongs to this module, so point it at a folder that holds only the package.
  - Check mode reports what would be added, updated and removed; with C(--diff) the changed files' text is shown.
options:
  dest:
    description: The folder that must hold exactly the archive's files (created when missing).
    type: path
    required: true
  archive:
    description: The result of the code_archive lookup (keys C(data), C(sha256), C(files)).
    type: dict
    required: true
  owner:
    description: Owner of the files and folders.
    type: str
    default: root
  group:
    description: Group of the files and folders.
    type: str
    default: root
  mode:
    description: Mode of the files (octal string).
    type: str
    default: "0644"
  directory_mode:
    description: Mode of the folders (octal string).
    type: str
    default: "0755"
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Install the built-in server's code
  autoglm.deploy.code_tree:
    dest: /opt/autoglm/serve/autoglm_serve
    archive: "{{ lookup('autoglm.deploy.code_archive', role_path ~ '/../../server/autoglm_serve') }}"
  register: server_code
  notify: Restart the service
"""

RETURN = r"""
added:
  description: Files of the archive that were missing in O(dest).
  type: list
  elements: str
  returned: always
updated:
  description: Files whose content, owner, group or mode differed.
  type: list
  elements: str
  returned: always
removed:
  description: Files and folders in O(dest) the archive does not hold (C(__pycache__) not listed).
  type: list
  elements: str
  returned: always
sha256:
  description: SHA-256 of the archive installed.
  type: str
  returned: always
"""

import base64
import binascii
import grp
import hashlib
import io
import os
import posixpath
import pwd
import shutil
import stat
import tarfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils._manifest import atomic_write_bytes

DIFF_LIMIT = 64 * 1024


class ArchiveError(ValueError):
    pass


def read_archive(archive: dict) -> dict:
    """{relpath: bytes} of a code_archive result, every member checked: regular files at safe relative paths."""
    try:
        raw = base64.b64decode(str(archive.get("data", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArchiveError("archive.data is not base64 (%s): pass the code_archive lookup's result unchanged" % exc) from exc
    if hashlib.sha256(raw).hexdigest() != archive.get("sha256"):
        raise ArchiveError("archive.data does not match archive.sha256: pass the code_archive lookup's result unchanged")
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                parts = name.split("/")
                if not member.isfile() or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    raise ArchiveError("archive member %r is not a plain file at a relative path" % name)
                files[posixpath.normpath(name)] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError("archive.data is not a gzip'd tar (%s)" % exc) from exc
    return files


def existing_tree(dest: str):
    """(files, folders) under dest, relative, without __pycache__; a link to a folder counts as a file."""
    files, folders = set(), set()
    for root, dirs, names in os.walk(dest):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel_root = os.path.relpath(root, dest)
        for d in dirs:
            (files if os.path.islink(os.path.join(root, d)) else folders).add(os.path.normpath(os.path.join(rel_root, d)))
        for name in names:
            files.add(os.path.normpath(os.path.join(rel_root, name)))
    return files, folders


def folder_drifted(path: str, uid: int, gid: int, mode: int) -> bool:
    info = os.lstat(path)
    return not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_gid != gid or stat.S_IMODE(info.st_mode) != mode


def needs_write(path: str, data: bytes, uid: int, gid: int, mode: int) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or info.st_gid != gid or stat.S_IMODE(info.st_mode) != mode:
        return True
    if info.st_size != len(data):
        return True
    with open(path, "rb") as handle:
        return handle.read() != data


def text_or_note(data):
    if data is None:
        return ""
    if len(data) > DIFF_LIMIT:
        return "(%d bytes, not shown)\n" % len(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "(%d bytes of binary data)\n" % len(data)


def old_content(path: str):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, IsADirectoryError):
        return None


def ensure_folder(path: str, uid: int, gid: int, mode: int) -> None:
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        os.unlink(path)
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "archive": {"type": "dict", "required": True},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "mode": {"type": "str", "default": "0644"},
            "directory_mode": {"type": "str", "default": "0755"},
        },
        supports_check_mode=True,
    )
    params = module.params
    dest = os.path.abspath(params["dest"])
    try:
        uid = pwd.getpwnam(params["owner"]).pw_uid
    except KeyError:
        module.fail_json(msg="owner %r does not exist on this node: create the user first" % params["owner"])
    try:
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError:
        module.fail_json(msg="group %r does not exist on this node: create the group first" % params["group"])
    modes = {}
    for key in ("mode", "directory_mode"):
        try:
            modes[key] = int(params[key], 8)
        except ValueError:
            module.fail_json(msg="%s must be an octal string such as 0644, got %r" % (key, params[key]))
    try:
        wanted = read_archive(params["archive"])
    except ArchiveError as exc:
        module.fail_json(msg=str(exc))

    if os.path.exists(dest) and not os.path.isdir(dest):
        module.fail_json(msg="dest %s exists and is not a folder: move it away or choose another dest" % dest)
    have_files, have_folders = existing_tree(dest) if os.path.isdir(dest) else (set(), set())
    wanted_folders = {posixpath.dirname(p) for p in wanted if posixpath.dirname(p)}
    for folder in list(wanted_folders):
        while "/" in folder:
            folder = posixpath.dirname(folder)
            wanted_folders.add(folder)
    added = sorted(p for p in wanted if p not in have_files)
    updated = sorted(p for p in wanted if p in have_files and p not in have_folders
                     and needs_write(os.path.join(dest, p), wanted[p], uid, gid, modes["mode"]))
    # A folder where a file belongs (or the reverse) goes first, then is written anew.
    removed = sorted((have_files - set(wanted)) | (have_folders - wanted_folders) | (have_folders & set(wanted)))
    folder_drift = not os.path.isdir(dest) or any(
        folder_drifted(os.path.join(dest, f), uid, gid, modes["directory_mode"])
        for f in [".", *sorted(wanted_folders & have_folders)])
    changed = bool(added or updated or removed or folder_drift)

    diff = []
    if module._diff:
        for path in added + updated:
            diff.append({"before_header": os.path.join(dest, path), "after_header": os.path.join(dest, path),
                         "before": text_or_note(old_content(os.path.join(dest, path))),
                         "after": text_or_note(wanted[path])})
        for path in removed:
            diff.append({"before_header": os.path.join(dest, path), "after_header": "(removed)",
                         "before": text_or_note(old_content(os.path.join(dest, path))), "after": ""})

    if changed and not module.check_mode:
        try:
            ensure_folder(dest, uid, gid, modes["directory_mode"])
            # Deepest first, so a folder's contents go before the folder.
            for path in sorted(removed, key=lambda p: -p.count("/")):
                target = os.path.join(dest, path)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                elif os.path.lexists(target):
                    os.unlink(target)
            for folder in sorted(wanted_folders):
                ensure_folder(os.path.join(dest, folder), uid, gid, modes["directory_mode"])
            for path in added + updated:
                target = os.path.join(dest, path)
                atomic_write_bytes(target, wanted[path], modes["mode"])
                os.chown(target, uid, gid)
            # Bytecode of what changed or went away must not outlive it.
            if added or updated or removed:
                for root, dirs, _names in os.walk(dest):
                    if "__pycache__" in dirs:
                        shutil.rmtree(os.path.join(root, "__pycache__"))
                        dirs.remove("__pycache__")
        except OSError as exc:
            module.fail_json(msg="could not install the code into %s: %s" % (dest, exc))

    module.exit_json(changed=changed, added=added, updated=updated, removed=removed,
                     sha256=params["archive"].get("sha256"), diff=diff)


if __name__ == "__main__":
    main()
