# SPDX-License-Identifier: Apache-2.0
"""A snapshot folder on this node, as model_fetch keeps it: what it holds and what a run must do to it.

<dest>/.autoglm/ holds the state: manifest.json (what the folder holds, _manifest), fetch.json (the source,
repo, commit and patterns the manifest was made for), fetch.lock (flock: one writer at a time) and parts/
(downloads in progress, named by a hash of the path so no file of the snapshot can share their names).

plan() sorts a listing into files to keep (recorded with the same content and size), to adopt (on disk
unrecorded with the right hash: a run killed before its manifest), to fetch, and the recorded ones to remove;
reusable() and link() hard-link files to fetch from other snapshot folders of the same repository;
check_disk() refuses a download that cannot fit; check_promoted() holds the manifest back unless every file is
the one verified. Nothing here speaks to a hub (_hubs) or HTTP (_http_download). Standard library only.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import time

from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing, _manifest, _stdlib

STATE_NAME = "fetch.json"
LOCK_NAME = "fetch.lock"
STATUS_NAME = "fetch-status.json"
PARTS_NAME = "parts"
MIB = 1 << 20


class FetchError(Exception):
    """A run cannot go on; `extra` are result fields to report with the failure."""

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.extra = extra


def expand_pattern(pattern: str) -> str:
    return pattern + "*" if pattern.endswith("/") else pattern


def selected(path: str, allow: list, ignore: list) -> bool:
    """huggingface_hub's filter_repo_objects: keep when an allow pattern matches (if any), then drop ignored."""
    if allow and not any(fnmatch.fnmatch(path, expand_pattern(p)) for p in allow):
        return False
    return not any(fnmatch.fnmatch(path, expand_pattern(p)) for p in ignore)


def same_content(expected: dict, recorded: dict) -> bool:
    """Whether a manifest entry describes the same bytes as the listing (size plus every hash known to both)."""
    if recorded.get("size") != expected["size"] and expected["size"] is not None:
        return False
    compared = False
    for key in ("sha256", "git_sha1"):
        if expected.get(key) and recorded.get(key):
            if expected[key] != recorded[key]:
                return False
            compared = True
    return compared


def device_of(path: str) -> int:
    """st_dev of path, or of its nearest existing parent (dest may not exist yet)."""
    while True:
        try:
            return os.stat(path).st_dev
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def manifest_body(manifest: dict) -> dict:
    body = dict(manifest)
    body.pop("fetched_at", None)
    return body


class SnapshotDir:
    """The destination folder and its .autoglm/ state."""

    def __init__(self, dest: str, lock_timeout: int = 0):
        self.dest = os.path.abspath(dest)
        self.state_dir = _manifest.state_dir(self.dest)
        self.manifest_path = _manifest.manifest_path(self.dest)
        self.lock_timeout = lock_timeout
        self._lock_fd = None

    # ---- paths -----------------------------------------------------------------------------------
    def part_path(self, rel: str, suffix: str = ".part") -> str:
        """Where the download (or hard-link staging) of rel lives: in our state folder, named by a hash of the
        path, so no listed file (w.bin.part, x.link, ...) can share the name."""
        digest = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:40]
        return os.path.join(self.state_dir, PARTS_NAME, digest + suffix)

    def safe_path(self, rel: str) -> str:
        _manifest.check_relpath(rel, "repo path")
        full = os.path.join(self.dest, rel)
        if not _stdlib.resolves_inside(os.path.dirname(full), self.dest):
            raise FetchError("refusing %s: its folder leads outside %s (a symlink?)" % (rel, self.dest))
        return full

    # ---- recorded state --------------------------------------------------------------------------
    def load_manifest(self):
        try:
            return _manifest.load(self.manifest_path)
        except _manifest.ManifestError:
            return None

    def load_state(self):
        try:
            with open(os.path.join(self.state_dir, STATE_NAME), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def save(self, manifest, new_manifest: dict, state, new_state: dict) -> None:
        """Write the manifest and the state record where they changed (the manifest's time aside)."""
        if manifest is None or manifest_body(manifest) != manifest_body(new_manifest):
            _manifest.write(self.dest, new_manifest)
        if state != new_state:
            _stdlib.atomic_write(os.path.join(self.state_dir, STATE_NAME), _stdlib.json_bytes(new_state))

    def complete_on_disk(self, manifest: dict) -> list:
        """Manifest paths that are missing or have the wrong size on disk."""
        bad = []
        for entry in manifest["files"]:
            try:
                if os.stat(os.path.join(self.dest, entry["path"])).st_size != entry["size"]:
                    bad.append(entry["path"])
            except OSError:
                bad.append(entry["path"])
        return bad

    # ---- one writer at a time --------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self):
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                    os.close(fd)
                    raise FetchError("another model_fetch (pid %s) is writing %s (lock %s held); wait for it to finish "
                                     "or raise lock_timeout" % (holder, self.dest, path)) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    # ---- what a run does -------------------------------------------------------------------------
    def plan(self, wanted: dict, manifest, repo_id: str) -> tuple:
        """(keep, adopt, fetch, removed, old) for the files wanted, against the manifest (if of repo_id)."""
        old = _manifest.by_path(manifest) if manifest and manifest["repo_id"] == repo_id else {}
        keep, adopt, fetch = {}, {}, {}
        for path, info in wanted.items():
            full = self.safe_path(path)
            recorded = old.get(path)
            try:
                st = os.stat(full)
            except OSError:
                st = None
            if recorded and same_content(info, recorded) and st is not None and st.st_size == recorded["size"]:
                keep[path] = recorded
                continue
            if st is not None and (info["size"] is None or st.st_size == info["size"]):
                # On disk but not recorded (a run killed after this file, before the manifest): hash, don't refetch.
                algos = ["sha256"] + (["git_sha1"] if info.get("git_sha1") else [])
                try:
                    actual = _hashing.hash_file(full, algos)
                except _hashing.HashError:
                    actual = {}
                known = [a for a in algos if info.get(a)]
                if actual and known and all(actual.get(a) == info[a] for a in known):
                    adopt[path] = dict(info, size=actual["size"], sha256=actual["sha256"])
                    continue
            fetch[path] = info
        removed = sorted(path for path in old if path not in wanted)
        return keep, adopt, fetch, removed, old

    def reusable(self, fetch: dict, folders: list, repo_id: str) -> dict:
        """{path: (file in another snapshot, its manifest entry)} for files to fetch that `folders` already hold."""
        found = {}
        here = os.path.realpath(self.dest)
        device = device_of(here)  # hard links stay on one filesystem; files elsewhere are downloaded
        for folder in folders:
            root = os.path.realpath(folder)
            if root == here:
                continue
            try:
                other = _manifest.load(_manifest.manifest_path(root))
            except _manifest.ManifestError:
                continue  # missing or unreadable: nothing to reuse there
            if other["repo_id"] != repo_id:
                continue
            for path, entry in _manifest.by_path(other).items():
                info = fetch.get(path)
                if info is None or path in found or not same_content(info, entry):
                    continue
                source = os.path.join(root, path)
                try:
                    st = os.stat(source)
                except OSError:
                    continue
                if st.st_size == entry["size"] and st.st_dev == device:
                    found[path] = (source, entry)
        return found

    def link(self, reuse: dict) -> dict:
        """Hard-link what reusable() found; returns the entries it linked (a failed link leaves the file to fetch)."""
        linked = {}
        for path, (source, entry) in reuse.items():
            target = self.safe_path(path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            staging = self.part_path(path, ".link")
            os.makedirs(os.path.dirname(staging), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            try:
                os.link(source, staging)
            except OSError:
                continue
            os.replace(staging, target)
            for leftover in (self.part_path(path), self.part_path(path) + ".ranges"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)  # an interrupted download of the same file is not needed any more
            linked[path] = entry
        return linked

    def prune(self, removed: list) -> None:
        for path in removed:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(self.safe_path(path))

    def check_disk(self, fetch: dict, headroom_mb: int) -> None:
        needed = 0
        for path, info in fetch.items():
            size = info["size"] or 0
            try:
                if os.stat(self.part_path(path)).st_blocks * 512 >= size:
                    continue  # preallocated by the earlier run
            except OSError:
                pass
            needed += size
        if not needed:
            return
        os.makedirs(self.dest, exist_ok=True)
        st = os.statvfs(self.dest)
        free = st.f_bavail * st.f_frsize
        headroom = headroom_mb * MIB
        if needed + headroom > free:
            raise FetchError("not enough disk space in %s: %d bytes to download + %d headroom, %d free; free %d bytes "
                             "(or lower disk_headroom_mb). Parts of earlier runs are kept."
                             % (self.dest, needed, headroom, free, needed + headroom - free),
                             bytes_needed=needed + headroom - free)

    def check_promoted(self, wanted: dict, fetched: dict) -> None:
        """Before the manifest vouches for them: each file is there with its listed size, and each downloaded
        one is still the very file whose bytes were verified (nothing renamed over it since)."""
        wrong = {}
        for path, info in wanted.items():
            try:
                st = os.lstat(self.safe_path(path))
            except OSError:
                wrong[path] = "%s is missing" % path
                continue
            size = info["size"] if info["size"] is not None else (fetched.get(path) or {}).get("size")
            if size is not None and st.st_size != size:
                wrong[path] = "%s holds %d bytes, the listing says %d" % (path, st.st_size, size)
            elif path in fetched and (st.st_dev, st.st_ino) != tuple(fetched[path]["file_id"]):
                wrong[path] = "%s is no longer the file that was downloaded and verified" % path
        if wrong:
            raise FetchError("after the download, %d file(s) in %s do not match the listing, so no manifest was "
                             "written (rerun to fetch them again): %s"
                             % (len(wrong), self.dest, "; ".join(list(wrong.values())[:20])), failed=sorted(wrong))

    def diff(self, old: dict, wanted: dict, fetch: dict, removed: list) -> dict:
        def line(path, info):
            return "%s  %s  %s\n" % (path, info.get("size"), info.get("sha256") or info.get("git_sha1") or "")
        before = "".join(line(path, old[path]) for path in sorted(old))
        after = "".join(line(path, wanted[path]) for path in sorted(wanted))
        return {"before": before, "after": after, "before_header": "%s (files before)" % self.dest,
                "after_header": "%s (files after: %d to fetch, %d removed)" % (self.dest, len(fetch), len(removed))}
