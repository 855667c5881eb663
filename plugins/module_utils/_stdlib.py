# SPDX-License-Identifier: Apache-2.0
"""Standard-library helpers with one home, shared by the modules and the mirror.

Atomic file replacement, the git blob id, the commit id derived from a snapshot's content, path
containment and credential-free URLs. Nothing here imports from the collection or from Ansible:
this same file is the mirror's ``autoglm_mirror/_stdlib.py`` (a symlink in the source tree, so the
``code_archive`` lookup packs its content into the mirror's archive), and target nodes have only the
Python standard library.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from urllib.parse import urlsplit


def fsync_dir(path: str) -> None:
    """fsync the folder holding `path`, so a rename into it survives a power cut."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix.

    The bytes go to a unique temporary file in the same folder, which is renamed over `path`. With
    `durable` (the default) the file and then its folder are fsynced, so a crash leaves the old or the
    new content; without it (progress files rewritten every second) a crash may leave the old one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path)


def json_bytes(data, indent: int | None = 1) -> bytes:
    """`data` as sorted JSON text ending in a newline, the form every state file of the collection uses."""
    return (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode("utf-8")


def git_blob_header(size: int) -> bytes:
    return b"blob %d\0" % size


def git_blob_sha1(data: bytes) -> str:
    """The id `git hash-object` gives this content (git's object id, not a security hash)."""
    digest = hashlib.sha1(git_blob_header(len(data)))
    digest.update(data)
    return digest.hexdigest()


def content_commit(files) -> str:
    """A 40-hex commit id derived from a snapshot's content, for snapshots that come without one.

    `files` are (path, sha256) pairs in any order. model_fetch (source=url) and the mirror's ingest both
    use it, so a snapshot fetched from URLs and ingested without --commit keeps its id."""
    return hashlib.sha1(json.dumps(sorted([path, sha256] for path, sha256 in files)).encode()).hexdigest()


def is_inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it, both taken as they are (resolve them first with realpath)."""
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root if root == os.sep else root + os.sep)


def resolves_inside(path: str, root: str) -> bool:
    """Whether `path`, symlinks resolved, stays inside the real `root`."""
    return is_inside(os.path.realpath(path), os.path.realpath(root))


def netloc_without_credentials(parts) -> str:
    """host[:port] of a urlsplit() result, IPv6 bracketed, never the user:password@ part."""
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    if parts.port:
        host += ":%d" % parts.port
    return host


def strip_credentials(url: str) -> str:
    """The base URL without user:password@, query or fragment: what may be recorded or shown as an endpoint."""
    parts = urlsplit(url)
    return "%s://%s%s" % (parts.scheme, netloc_without_credentials(parts), parts.path.rstrip("/")) if parts.scheme else url
