# SPDX-License-Identifier: Apache-2.0
"""Streaming file hashes for model weights: sha256 and the git blob sha1, alone or both from one read.

Hubs name a file's content two ways (see shared/reference/hub-apis.md): LFS files (weights) by
sha256, small files kept in git (config.json, tokenizer files) only by their git blob id,
sha1(b"blob <size>\\0" + content). Both kinds are needed to verify a snapshot.

Speed: reads are large (8 MiB, into one reused buffer, no per-chunk allocation) and hashlib
releases the GIL while it hashes a buffer that large, so hash_files() gets one core per thread.

Used by model_verify (whole files on disk) and model_fetch (IncrementalHasher, fed while a
download streams). Standard library only: this runs on target nodes.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.autoglm.deploy.plugins.module_utils._stdlib import git_blob_header, git_blob_sha1

SHA256 = "sha256"
GIT_SHA1 = "git_sha1"
ALGORITHMS = (SHA256, GIT_SHA1)
CHUNK_SIZE = 8 * 1024 * 1024


class HashError(Exception):
    """A file could not be hashed (unreadable, or it changed size while being read)."""


git_blob_sha1_bytes = git_blob_sha1  # the id `git hash-object` gives bytes in memory (one home: _stdlib)


class IncrementalHasher:
    """Feed bytes in order, get sha256 and/or git blob sha1 of all of them at the end.

    The git blob id hashes the size first, so `size` (the final size) is required when GIT_SHA1 is
    wanted; hexdigests() refuses if a different number of bytes was fed, since the id would be wrong.
    A downloader resuming at an offset must feed the bytes already on disk first.
    """

    def __init__(self, algorithms=(SHA256,), size: int | None = None):
        unknown = [name for name in algorithms if name not in ALGORITHMS]
        if unknown:
            raise ValueError("unknown hash algorithm(s) %s; known: %s" % (", ".join(unknown), ", ".join(ALGORITHMS)))
        self.algorithms = tuple(algorithms)
        self.size = size
        self.fed = 0
        self._hashers = []
        if SHA256 in self.algorithms:
            self._hashers.append((SHA256, hashlib.sha256()))
        if GIT_SHA1 in self.algorithms:
            if size is None:
                raise ValueError("the git blob sha1 needs the file size up front")
            sha1 = hashlib.sha1(git_blob_header(size))
            self._hashers.append((GIT_SHA1, sha1))

    def update(self, data) -> None:
        """Add bytes (bytes, bytearray or memoryview)."""
        for _name, hasher in self._hashers:
            hasher.update(data)
        self.fed += len(data)

    def hexdigests(self) -> dict:
        if self.size is not None and self.fed != self.size:
            raise HashError("expected %d bytes, got %d" % (self.size, self.fed))
        return {name: hasher.hexdigest() for name, hasher in self._hashers}


def hash_file(path: str, algorithms=(SHA256,), chunk_size: int = CHUNK_SIZE) -> dict:
    """Hash one file with every algorithm in `algorithms` from a single read.

    Returns {"size": bytes read, "sha256": hex, "git_sha1": hex} (only the algorithms asked for).
    Raises HashError when the file cannot be read or its size changed while it was being read.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            if hasattr(os, "posix_fadvise"):
                # A hint only: doubles the kernel's readahead window on a cold read.
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            hasher = IncrementalHasher(algorithms, size=size)
            buffer = bytearray(max(1, min(chunk_size, size + 1)))
            view = memoryview(buffer)
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                hasher.update(view[:count])
    except OSError as exc:
        raise HashError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    try:
        result = hasher.hexdigests()
    except HashError as exc:
        raise HashError("%s changed while it was hashed (%s)" % (path, exc)) from exc
    result["size"] = hasher.fed
    return result


def sha256_file(path: str) -> str:
    return hash_file(path, (SHA256,))[SHA256]


def git_blob_sha1_file(path: str) -> str:
    return hash_file(path, (GIT_SHA1,))[GIT_SHA1]


def default_jobs() -> int:
    return os.cpu_count() or 1


def hash_files(jobs_by_path: dict, jobs: int | None = None) -> dict:
    """Hash many files in parallel threads.

    `jobs_by_path` maps a path to the algorithms wanted for it. Returns path -> hash_file() result,
    or path -> HashError for a file that could not be hashed (one bad file does not stop the rest).
    Largest files start first so one big file left for last does not leave the other cores idle.
    """
    workers = max(1, min(jobs or default_jobs(), len(jobs_by_path) or 1))

    def size_of(path):
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    order = sorted(jobs_by_path, key=size_of, reverse=True)

    def one(path):
        try:
            return hash_file(path, jobs_by_path[path])
        except HashError as exc:
            return exc

    if workers == 1:
        return {path: one(path) for path in order}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(order, pool.map(one, order)))
