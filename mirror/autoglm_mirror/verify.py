"""Content checks of the store: what the server may serve, and the `verify` command that repairs it.

A file is trusted when its sha256 matches its snapshot index. Trust is remembered under the file's
identity (dev, inode, size, mtime_ns, ctime_ns): any write to the file changes ctime (userspace cannot
set it back), so a rewritten or replaced file is hashed again. Bit rot below the filesystem keeps the
identity; `verify --no-cache` rehashes everything for that.

Per snapshot, `SHA.verified.json` (next to its index, written by `ingest` and `verify` as root, read
by the server) records {path: {"key": identity, "sha256": hex}}, so a mirror restart or a rerun of
`verify` hashes nothing that did not change.

`verify` compares every file of a snapshot with its index; with --src (the seed's verified copy of the
same revision) it repairs: a bad file is moved to DATA/quarantine/ORG/NAME/COMMIT/PATH.<ns>, a missing,
bad or hard-linked file (sharing its inode with the source, so one corruption would hit both) is
replaced by a copy (a reflink where the filesystem can) that is hashed before it is renamed into place.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from typing import Any

from ._stdlib import atomic_write, fsync_dir, json_bytes
from .store import COMMIT, StoreError, check_repo_id, check_repo_path

CHUNK = 8 << 20
FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int): share extents, copy on write (Btrfs, XFS reflink=1)
CACHE_SUFFIX = ".verified.json"


class VerifyError(RuntimeError):
    pass


def file_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def sha256_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        data = os.pread(fd, min(CHUNK, size - offset), offset)
        if not data:
            raise VerifyError("file shrank while being hashed")
        digest.update(data)
        offset += len(data)
    return digest.hexdigest()


def sha256_path(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return sha256_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def clone_or_copy(src: str, dest: str, plain: bool = True) -> str | None:
    """Copy src to dest (a new inode, never a hard link): FICLONE, else copy_file_range, else read/write.

    Returns how: "reflink" (no extra disk until either side is written), "copy_file_range" or "copy";
    None when plain is false and neither fast way worked (the caller copies, hashing on the way)."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return "reflink"
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS):
                raise
        size = os.fstat(fin.fileno()).st_size
        copied = 0
        if hasattr(os, "copy_file_range"):
            try:
                while copied < size:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), size - copied)
                    if n == 0:
                        break
                    copied += n
                if copied == size:
                    return "copy_file_range"
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
                    raise
        if not plain:
            return None
        fin.seek(copied)
        fout.seek(copied)
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.truncate(size)
        return "copy"


def cache_path(snapshots: str, commit: str) -> str:
    return os.path.join(snapshots, commit + CACHE_SUFFIX)


def read_cache(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def write_cache(path: str, files: dict[str, dict[str, Any]]) -> None:
    atomic_write(path, json_bytes({"format": 1, "files": files}), durable=False)  # bookkeeping: rebuilt if lost


def verify_snapshot(data: str, repo_id: str, commit: str, src: str | None = None, dry_run: bool = False,
                    use_cache: bool = True) -> dict[str, Any]:
    """Check one snapshot against its index; with src, repair it. Returns what was found and done."""
    org, name = check_repo_id(repo_id)
    if not COMMIT.match(commit):
        raise StoreError("commit %r is not 40 lowercase hex digits" % commit)
    snapshots = os.path.join(os.path.abspath(data), "repos", org, name, "snapshots")
    index_path = os.path.join(snapshots, commit + ".index.json")
    try:
        with open(index_path, encoding="utf-8") as fh:
            index = json.load(fh)
    except FileNotFoundError:
        raise VerifyError("%s@%s is not in %s: ingest it first" % (repo_id, commit, data)) from None
    if src is not None and not os.path.isdir(src):
        raise VerifyError("repair source %s is not a directory" % src)
    root = os.path.join(snapshots, commit)
    cache_file = cache_path(snapshots, commit)
    old_cache = read_cache(cache_file) if use_cache else {}
    cache: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"repo": repo_id, "commit": commit, "checked": 0, "hashed": 0, "bad": [], "missing": [],
                              "linked": [], "repaired": [], "quarantined": [], "dry_run": dry_run}
    for entry in index["files"]:
        path = check_repo_path(entry["path"])
        full = os.path.join(root, *path.split("/"))
        result["checked"] += 1
        problem = None
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            st = None
            problem = "missing"
        if st is not None:
            key = file_key(st)
            if not os.path.stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                problem = "bad"
            elif old_cache.get(path, {}).get("key") == key and old_cache[path].get("sha256") == entry["sha256"]:
                cache[path] = old_cache[path]
            else:
                result["hashed"] += 1
                if sha256_path(full) == entry["sha256"]:
                    cache[path] = {"key": key, "sha256": entry["sha256"]}
                else:
                    problem = "bad"
        source = os.path.join(src, *path.split("/")) if src else None
        if problem is None and source and st is not None and st.st_nlink > 1:
            with_src = os.stat(source) if os.path.exists(source) else None
            if with_src is not None and (with_src.st_dev, with_src.st_ino) == (st.st_dev, st.st_ino):
                problem = "linked"  # the seed's copy and the mirror's are one inode: one corruption hits both
        if problem is None:
            continue
        result[problem].append(path)
        cache.pop(path, None)
        if source is None or dry_run:
            continue
        if not os.path.isfile(source):
            raise VerifyError("%s is %s in the mirror and the repair source %s has no %s" % (path, problem, src, path))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        tmp = os.path.join(os.path.dirname(full), ".repair-%d-%s" % (os.getpid(), os.path.basename(full)))
        try:
            clone_or_copy(source, tmp)
            os.chmod(tmp, 0o644)
            got = sha256_path(tmp)
            if got != entry["sha256"]:
                raise VerifyError("the repair source's %s has sha256 %s, not %s as the index says: verify %s first"
                                  % (path, got, entry["sha256"], src))
            if problem == "bad":
                aside = os.path.join(os.path.abspath(data), "quarantine", org, name, commit,
                                     *path.split("/")) + ".%d" % time.time_ns()
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(full, aside)  # a rename when the quarantine is on the same filesystem
                result["quarantined"].append(aside)
            os.replace(tmp, full)
            fsync_dir(full)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        cache[path] = {"key": file_key(os.lstat(full)), "sha256": entry["sha256"]}
        result["repaired"].append(path)
    result["changed"] = bool(result["bad"] or result["missing"] or result["linked"]) and src is not None
    if not dry_run and cache != old_cache:
        write_cache(cache_file, cache)  # bookkeeping only: not a change of what is served
    return result


class Verdicts:
    """The server's memory of which file identities were found good or bad (shared by all connections)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._good: dict[tuple, str] = {}
        self._bad: dict[tuple, str] = {}
        self._busy: dict[tuple, threading.Lock] = {}

    def good(self, key: list[int], sha256: str) -> bool:
        return self._good.get(tuple(key)) == sha256

    def bad(self, key: list[int]) -> str | None:
        return self._bad.get(tuple(key))

    def record(self, key: list[int], sha256: str, ok: bool, why: str = "") -> None:
        with self._lock:
            if ok:
                self._good[tuple(key)] = sha256
            else:
                self._bad[tuple(key)] = why

    def lock_for(self, key: list[int]):
        with self._lock:
            return self._busy.setdefault(tuple(key), threading.Lock())
