#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tree_permissions
short_description: Owner, group and mode of every file and folder under a path, and proof that a given user can read them
version_added: "0.2.0"
description:
  - Walks O(path) (a link to it is followed once; links inside are left alone and not followed) with one C(lstat)
    per entry, no reading of contents, and sets owner, group and mode where they differ - O(file_mode) on regular
    files, O(dir_mode) on folders, O(path) itself included.
  - Then checks, from the mode bits and the user's groups, that O(reader) can reach O(path) (every parent folder
    searchable) and read every file and list every folder, and fails naming the first entry it cannot, with the
    settings to change. A reader that does not exist (yet) is not checked, and RV(reader_checked) says so.
options:
  path:
    description: Root of the tree, for example a model snapshot (C(/srv/models/m/current)).
    type: path
    required: true
  owner:
    description: User name or id every entry must belong to.
    type: str
    default: root
  group:
    description: Group name or id every entry must belong to.
    type: str
    default: root
  file_mode:
    description: Mode of regular files, octal.
    type: str
    default: "0644"
  dir_mode:
    description: Mode of folders, octal.
    type: str
    default: "0755"
  reader:
    description: User that must be able to read the whole tree (the service's user); not checked when empty.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    description: Reports what would be changed (and whether the reader could read afterwards); changes nothing.
  diff_mode:
    support: full
    description: One line per changed entry, before and after.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Let the inference service read every file of the snapshot
  autoglm.deploy.tree_permissions:
    path: /srv/models/autoglm-phone-9b/0123456789abcdef0123456789abcdef01234567
    reader: autoglm-inference
"""

RETURN = r"""
path:
  description: The tree walked (the link resolved).
  returned: always
  type: str
entries:
  description: Files and folders checked.
  returned: always
  type: int
fixed:
  description: Entries changed (that would be, in check mode), relative to RV(path), with what changed (at most 50).
  returned: always
  type: list
  elements: str
  sample: ["model-00001-of-00002.safetensors: mode 0600 -> 0644, owner 0 -> 0"]
fixed_count:
  description: How many entries were (would be) changed.
  returned: always
  type: int
reader_checked:
  description: Whether O(reader) exists and was checked.
  returned: always
  type: bool
"""

import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

SHOWN = 50


def _uid(value: str) -> int:
    return int(value) if value.isdigit() else pwd.getpwnam(value).pw_uid


def _gid(value: str) -> int:
    return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid


def can(mode: int, uid: int, gid: int, reader_uid: int, reader_gids: set, bits: int) -> bool:
    """Whether the reader has every permission in BITS (4 read, 1 search) on an entry, by its mode bits."""
    if reader_uid == 0:
        return True
    if reader_uid == uid:
        return (mode >> 6) & bits == bits
    if gid in reader_gids:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


class Tree:
    def __init__(self, module: AnsibleModule):
        p = module.params
        self.module = module
        self.root = os.path.realpath(p["path"])
        self.uid, self.gid = _uid(p["owner"]), _gid(p["group"])
        self.modes = {"file": int(p["file_mode"], 8), "dir": int(p["dir_mode"], 8)}

    def walk(self):
        """(path, kind, lstat) for the root and everything under it; symbolic links are skipped, not followed."""
        yield self.root, "dir", os.lstat(self.root)
        for top, dirs, files in os.walk(self.root, followlinks=False):
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    yield path, "dir", st
                elif stat.S_ISREG(st.st_mode):
                    yield path, "file", st

    def repair(self) -> dict:
        found = dict(entries=0, fixed=[], count=0, final=[], before=[], after=[])
        for path, kind, st in self.walk():
            found["entries"] += 1
            want = self.modes[kind]
            have = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if have != (want, self.uid, self.gid):
                found["count"] += 1
                rel = os.path.relpath(path, self.root)
                if len(found["fixed"]) < SHOWN:
                    changes = ["%s %s -> %s" % (what, old, new) for what, old, new in (
                        ("mode", "%04o" % have[0], "%04o" % want), ("owner", have[1], self.uid),
                        ("group", have[2], self.gid)) if old != new]
                    found["fixed"].append("%s: %s" % (rel, ", ".join(changes)))
                    found["before"].append("%s %04o %d:%d\n" % (rel, have[0], have[1], have[2]))
                    found["after"].append("%s %04o %d:%d\n" % (rel, want, self.uid, self.gid))
                if not self.module.check_mode:
                    # Owner first: chown clears set-id bits, the chmod after it sets the mode wanted.
                    os.lchown(path, self.uid, self.gid)
                    os.chmod(path, want)
            found["final"].append((path, kind))
        return found

    def unreadable(self, reader: str, entries: list):
        """The first entry (a parent folder, or one of ENTRIES in its repaired state) the reader cannot use, or None."""
        user = pwd.getpwnam(reader)
        gids = {user.pw_gid} | {group.gr_gid for group in grp.getgrall() if reader in group.gr_mem}
        parent = os.path.dirname(self.root)
        while True:
            st = os.stat(parent)
            if not can(st.st_mode, st.st_uid, st.st_gid, user.pw_uid, gids, 1):
                return parent, "search (x)"
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
        for path, kind in entries:
            bits = 5 if kind == "dir" else 4
            if not can(self.modes[kind], self.uid, self.gid, user.pw_uid, gids, bits):
                return path, "read and search (r-x)" if kind == "dir" else "read (r)"
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            file_mode=dict(type="str", default="0644"),
            dir_mode=dict(type="str", default="0755"),
            reader=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for key in ("file_mode", "dir_mode"):
        try:
            if not 0 <= int(p[key], 8) <= 0o7777:
                raise ValueError
        except ValueError:
            module.fail_json(msg="%s must be an octal mode such as 0644, got %r" % (key, p[key]))
    if not os.path.isdir(p["path"]):
        module.fail_json(msg="path %s is not a folder: nothing to check (fetch the snapshot first)" % p["path"])
    try:
        tree = Tree(module)
    except KeyError as exc:
        module.fail_json(msg="owner %r or group %r does not exist on this host (%s): create it or choose another"
                         % (p["owner"], p["group"], exc))
    try:
        found = tree.repair()
    except OSError as exc:
        module.fail_json(msg="setting owner and mode under %s failed: %s" % (tree.root, exc))
    result = dict(changed=found["count"] > 0, path=tree.root, entries=found["entries"], fixed=found["fixed"],
                  fixed_count=found["count"], reader_checked=False)
    if module._diff and found["count"]:
        result["diff"] = dict(before="".join(found["before"]), after="".join(found["after"]))
    if p["reader"]:
        try:
            blocked = tree.unreadable(p["reader"], found["final"])
        except KeyError:
            # Not a warning: the seed never has the service user, and nodes get it only in a later role.
            module.exit_json(**result)
        result["reader_checked"] = True
        if blocked:
            module.fail_json(msg="%s cannot %s %s with owner %s, group %s, file_mode %s, dir_mode %s: widen the modes, "
                                 "or make %s the owner or a member of the group" % (
                                     p["reader"], blocked[1], blocked[0], p["owner"], p["group"], p["file_mode"],
                                     p["dir_mode"], p["reader"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
