"""The data directory: repositories, their refs and immutable snapshots, and safe lookups into them.

Layout (everything below DATA is written by `ingest` and `verify` only, as root; the server never writes):

    DATA/repos/ORG/NAME/refs.json                      {"branches": {"main": SHA}, "tags": {"v1.0": SHA}}
    DATA/repos/ORG/NAME/snapshots/SHA/<files...>       the snapshot's files (copies: reflinks where possible)
    DATA/repos/ORG/NAME/snapshots/SHA.index.json       per file: path, size, sha256, git blob sha1, lfs
    DATA/repos/ORG/NAME/snapshots/SHA.verified.json    identities of files found to match the index (verify.py)
    DATA/quarantine/ORG/NAME/SHA/<path>.<ns>           files `verify --src` found bad and moved aside

A snapshot exists once its index exists (the index is written last), so a half-finished ingest is
never served.

Which files are LFS files (this decides the listing shape and the ETag, as on the Hugging Face Hub):
a file is an LFS file when its extension is one Hugging Face tracks with git-lfs by default
(LFS_SUFFIXES: weights, archives, arrays...) or when it is 10 MiB or larger (huggingface_hub refuses
plain git files above 10 MiB). LFS files are listed with `lfs: {oid: sha256, size, pointerSize}`, their
`oid`/`blobId` is the git sha1 of their pointer file, and their ETag is the sha256 of the content.
Other files are plain git files: `oid`/`blobId` and ETag are the git blob sha1 of the content.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from typing import Any

from ._stdlib import git_blob_sha1, is_inside

LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar",
    ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)
REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


class StoreError(ValueError):
    """Bad input to the store (a repo id, revision or path that cannot be valid)."""


def is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or path.lower().endswith(LFS_SUFFIXES)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (sha256.encode(), size)


def check_repo_id(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(REPO_PART.match(p) and ".." not in p for p in parts):
        raise StoreError("repo id %r is not ORG/NAME (letters, digits, '.', '_', '-')" % repo_id)
    return parts[0], parts[1]


def check_repo_path(path: str) -> str:
    """A file path inside a snapshot: relative, '/'-separated, no empty, '.' or '..' parts, no NUL/backslash."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise StoreError("path %r is not a relative path inside the repository" % path)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise StoreError("path %r has an empty, '.' or '..' part" % path)
    return path


class Snapshot:
    """One immutable snapshot: its index in memory, and files resolved safely below its directory."""

    def __init__(self, repo_id: str, root: str, index: dict[str, Any]):
        self.repo_id = repo_id
        self.root = root
        self.real_root = os.path.realpath(root)
        self.commit: str = index["commit"]
        self.created: str = index.get("created", "1970-01-01T00:00:00.000Z")
        self.files: dict[str, dict[str, Any]] = {f["path"]: f for f in index["files"]}
        self.dirs: dict[str, list[str]] = {"": []}
        for path in sorted(self.files):
            parent = ""
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in self.dirs:
                    self.dirs[folder] = []
                    self.dirs[parent].append(folder)
                parent = folder
            self.dirs[parent].append(path)
        self._dir_oids: dict[str, str] = {}
        self.verified_path = root + ".verified.json"  # identities ingest/verify found good (see verify.py)

    def blob_id(self, entry: dict[str, Any]) -> str:
        if entry["lfs"]:
            return git_blob_sha1(lfs_pointer(entry["sha256"], entry["size"]))
        return entry["git_sha1"]

    def etag(self, entry: dict[str, Any]) -> str:
        return entry["sha256"] if entry["lfs"] else entry["git_sha1"]

    def dir_oid(self, folder: str) -> str:
        if folder not in self._dir_oids:
            digest = hashlib.sha1()
            for child in self.dirs[folder]:
                oid = self.dir_oid(child) if child in self.dirs else self.blob_id(self.files[child])
                digest.update(("%s %s\n" % (oid, child)).encode())
            self._dir_oids[folder] = digest.hexdigest()
        return self._dir_oids[folder]

    def walk(self, folder: str, recursive: bool) -> list[str]:
        """Paths below folder ('' for the root): files and folders, sorted; only direct children unless recursive."""
        out = []
        for child in self.dirs[folder]:
            out.append(child)
            if recursive and child in self.dirs:
                out.extend(self.walk(child, True))
        return sorted(out)

    def open_file(self, path: str) -> tuple[int, os.stat_result]:
        """Open a file of this snapshot read-only; refuse anything whose real path leaves the snapshot."""
        full = os.path.join(self.root, *path.split("/"))
        real = os.path.realpath(full)
        if real == self.real_root or not is_inside(real, self.real_root):
            raise PermissionError("%s resolves outside the snapshot" % path)
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        if not os.path.stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise PermissionError("%s is not a regular file" % path)
        return fd, st


class Repo:
    def __init__(self, store: Store, repo_id: str):
        self.store = store
        self.repo_id = repo_id
        self.root = os.path.join(store.data, "repos", *check_repo_id(repo_id))

    def exists(self) -> bool:
        return os.path.isdir(os.path.join(self.root, "snapshots"))

    def refs(self) -> dict[str, dict[str, str]]:
        return self.store.read_refs(os.path.join(self.root, "refs.json"))

    def resolve(self, revision: str) -> str | None:
        """Commit for a branch, tag or commit id; None if the repo has no such revision."""
        refs = self.refs()
        for kind in ("branches", "tags"):
            if revision in refs.get(kind, {}):
                return refs[kind][revision]
        if COMMIT.match(revision) and os.path.isfile(self.index_path(revision)):
            return revision
        return None

    def index_path(self, commit: str) -> str:
        return os.path.join(self.root, "snapshots", commit + ".index.json")

    def snapshot(self, commit: str) -> Snapshot | None:
        return self.store.load_snapshot(self, commit)


class Store:
    """Read side of the data directory, with small caches invalidated by the files' mtimes."""

    def __init__(self, data: str):
        self.data = os.path.abspath(data)
        self._lock = threading.Lock()
        self._refs: dict[str, tuple[int, dict]] = {}
        self._snapshots: dict[tuple[str, str], tuple[int, Snapshot]] = {}
        self._verified: dict[str, tuple[int, dict]] = {}

    def repo(self, repo_id: str) -> Repo:
        return Repo(self, repo_id)

    def repo_ids(self) -> list[str]:
        base = os.path.join(self.data, "repos")
        out = []
        for org in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            for name in sorted(os.listdir(os.path.join(base, org))):
                if os.path.isdir(os.path.join(base, org, name, "snapshots")):
                    out.append(org + "/" + name)
        return out

    def read_refs(self, path: str) -> dict[str, dict[str, str]]:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return {"branches": {}, "tags": {}}
        cached = self._refs.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        with open(path, encoding="utf-8") as fh:
            refs = json.load(fh)
        with self._lock:
            self._refs[path] = (mtime, refs)
        return refs

    def load_snapshot(self, repo: Repo, commit: str) -> Snapshot | None:
        if not COMMIT.match(commit):
            return None
        path = repo.index_path(commit)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None
        key = (repo.repo_id, commit)
        cached = self._snapshots.get(key)
        if cached and cached[0] == mtime:
            return cached[1]
        with open(path, encoding="utf-8") as fh:
            snap = Snapshot(repo.repo_id, os.path.join(repo.root, "snapshots", commit), json.load(fh))
        with self._lock:
            self._snapshots[key] = (mtime, snap)
        return snap

    def verified(self, snap: Snapshot) -> dict[str, dict[str, Any]]:
        """The snapshot's record of verified file identities ({} when there is none or it cannot be read)."""
        try:
            mtime = os.stat(snap.verified_path).st_mtime_ns
        except OSError:
            return {}
        cached = self._verified.get(snap.verified_path)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            with open(snap.verified_path, encoding="utf-8") as fh:
                files = json.load(fh).get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {}
        files = files if isinstance(files, dict) else {}
        with self._lock:
            self._verified[snap.verified_path] = (mtime, files)
        return files
