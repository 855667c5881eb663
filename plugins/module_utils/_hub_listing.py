# SPDX-License-Identifier: Apache-2.0
"""What a hub's file listing may contain: every entry checked before anything is fetched or recorded.

A listing comes from a remote side (a mirror, a hub, whatever answers on the endpoint), so nothing in
it is trusted as it comes: the commit must be a 40-hex id, each path a safe relative path
(_manifest.check_relpath: no '.', '..', absolute paths, backslashes, control characters), each size
an integer >= 0, each hash lowercase hex of its length, no path twice, and every file must carry a hash
to be verified by. A bad entry raises ListingError naming the entry, its path and the endpoint.

Each hub's parser (_hubs.py) builds its (commit, {path: {size, sha256, git_sha1}}) from these checks and
add_entry(), which leaves our own state folder (.autoglm/) out: it is never a model file. Standard
library only: runs on target nodes.
"""
from __future__ import annotations

from ansible_collections.autoglm.deploy.plugins.module_utils import _manifest

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class ListingError(ValueError):
    """The listing is malformed or names something unsafe; the message says which entry and where from."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_hex(value, digits: int, where: str, what: str):
    """None for absent/empty, else the lowercase hex digest; anything else is refused."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and _manifest.is_hex(value.lower(), digits):
        return value.lower()
    raise ListingError("%s: %s must be hex of %d digits, got %r" % (where, what, digits, short(value)))


def check_commit(value, where: str) -> str:
    commit = check_hex(value, 40, where, "the commit id")
    if commit is None:
        raise ListingError("%s: the listing names no commit id (a 40-hex id is required)" % where)
    return commit


def check_path(path, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise ListingError("%s: the path must be a non-empty string, got %r" % (where, short(path)))
    if not _manifest.is_state_path(path):  # our state folder is dropped by the caller, never written
        try:
            _manifest.check_relpath(path, "path")
        except _manifest.ManifestError as exc:
            raise ListingError("%s: %s" % (where, exc)) from None
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ListingError("%s: path %r is not valid UTF-8" % (where, short(path))) from None
    if len(encoded) > MAX_PATH_BYTES or any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.split("/")):
        raise ListingError("%s: path %r is longer than a file system allows" % (where, short(path)))
    return path


def check_entry(path, size, sha256, git_sha1, where: str) -> tuple:
    """(path, {size, sha256, git_sha1}) of one listed file, or ListingError."""
    path = check_path(path, where)
    where = "%s (%r)" % (where, path)
    if size is not None and (not _is_int(size) or size < 0):
        raise ListingError("%s: size must be an integer >= 0, got %r" % (where, short(size)))
    info = {"size": size, "sha256": check_hex(sha256, 64, where, "sha256"),
            "git_sha1": check_hex(git_sha1, 40, where, "the git blob id")}
    if info["sha256"] is None and info["git_sha1"] is None:
        # Without a hash nothing proves the bytes are the listed file's: never promote them unverified.
        raise ListingError("%s: the listing gives no sha256 and no git blob id, so the file cannot be verified"
                           % where)
    return path, info


def add_entry(files: dict, path: str, info: dict, where: str) -> None:
    if path in files:
        raise ListingError("%s: path %r is listed twice" % (where, path))
    if not _manifest.is_state_path(path):
        files[path] = info


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
