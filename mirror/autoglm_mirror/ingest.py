"""`ingest`: add a snapshot from a local directory under a repo id and commit, and point refs at it.

Files are copied, never hard-linked: a hard link made the mirror's file and the seed's one inode, so
one corruption hit both. The copy is a reflink where the filesystem shares extents (FICLONE: Btrfs,
XFS with reflink=1; no extra disk until one side is written), else copy_file_range, else a plain copy
(the store then holds a second copy of the model on disk). Hashes (sha256, git blob sha1) are computed
from the copy as it lands, or, with --manifest (the seed's verified manifest, `.autoglm/manifest.json` as
model_fetch writes it), taken from it: then only a file the manifest gives too few hashes for is read, the
manifest's commit is the snapshot's, and a rerun compares the manifest with the index without reading a byte.
Files taken from a manifest are not recorded as verified here: the server, or the `verify` command that
publishing runs next, hashes the mirror's copy before trusting it. --link is accepted for old callers and copies.
Files land in a staging directory that is renamed into place, then the index is written, then refs: a reader
sees the old state or the new one.
Re-ingesting the same content is a no-op (`"changed": false`), so configuration management can rerun it.
Symlinks inside the source (a Hugging Face cache snapshot is made of them) are followed; the data
directory itself never gets a symlink.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from typing import Any

from ._stdlib import atomic_write, content_commit, git_blob_header, json_bytes
from .store import COMMIT, REF_NAME, StoreError, check_repo_id, check_repo_path, is_lfs
from .verify import cache_path, clone_or_copy, file_key, write_cache

CHUNK = 8 << 20
HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "git_sha1": re.compile(r"^[0-9a-f]{40}$")}
# Not content: git metadata, huggingface_hub's local_dir state, and autoglm.deploy's own (manifest, verify
# cache, quarantine), so a deployed revision folder can be ingested as it is.
SKIP_DIRS = {".git", ".cache", ".autoglm"}


class IngestError(RuntimeError):
    pass


def scan(src: str) -> list[str]:
    """Relative '/'-paths of the regular files below src (following symlinks), sorted."""
    out = []
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.isfile(full):
                raise IngestError("%s is not a regular file (or a link to one)" % full)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            out.append(check_repo_path(rel))
    return sorted(out)


def hash_file(src: str, dest: str | None) -> dict[str, Any]:
    """sha256 and git blob sha1 of src, copying it to dest on the way when dest is given."""
    size = os.stat(src).st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(git_blob_header(size))
    with open(src, "rb") as fh, open(dest or os.devnull, "wb") as out:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            sha256.update(chunk)
            sha1.update(chunk)
            if dest:
                out.write(chunk)
    return {"size": size, "sha256": sha256.hexdigest(), "git_sha1": sha1.hexdigest()}


def read_manifest(path: str) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(commit or None, {path: {size, sha256, git_sha1}}) of a model_fetch manifest (format 1)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise IngestError("cannot read the manifest %s: %s" % (path, getattr(err, "strerror", None) or err)) from None
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("files"), list):
        raise IngestError("%s is not a model_fetch manifest (format 1, with a files list)" % path)
    files: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(data["files"]):
        where = "%s: files[%d]" % (path, index)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise IngestError("%s must be an object with a path" % where)
        rel = check_repo_path(entry["path"])
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise IngestError("%s (%s): size must be an integer >= 0, got %r" % (where, rel, size))
        hashes = {key: entry.get(key) for key in HEX}
        for key, value in hashes.items():
            if value is not None and not (isinstance(value, str) and HEX[key].match(value)):
                raise IngestError("%s (%s): %s must be lowercase hex or null, got %r" % (where, rel, key, value))
        if rel in files:
            raise IngestError("%s: %s is listed twice" % (where, rel))
        files[rel] = dict(hashes, size=size)
    commit = data.get("commit")
    return (commit if isinstance(commit, str) else None), files


def _given(path: str, known: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """The manifest's entry for path when it names everything the index needs (else the file is hashed):
    a sha256 always, and the git blob sha1 for a file served as a plain git file."""
    entry = (known or {}).get(path)
    if entry is None or not entry["sha256"] or (not entry["git_sha1"] and not is_lfs(path, entry["size"])):
        return None
    return entry


def _place(src: str, dest: str, given: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """Copy src to dest as a new inode (reflink when possible); (what landed, whether it was hashed).

    Without `given` (the manifest's entry) the copy is hashed; with it only its size is checked, unless
    the copy had to go through this process anyway (no reflink, no copy_file_range), hashing on the way."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    hashed = True
    if clone_or_copy(os.path.realpath(src), dest, plain=False) is None:
        info = hash_file(src, dest)  # one read for both the copy and the hashes
    elif given is None:
        info = hash_file(dest, None)
    else:
        info, hashed = dict(given, size=os.stat(dest).st_size), False
    os.chmod(dest, 0o644)
    return info, hashed


def _check_given(src: str, info: dict[str, Any], given: dict[str, Any]) -> None:
    if info["size"] != given["size"]:
        raise IngestError("%s holds %d bytes, the manifest says %d: verify the source first"
                          % (src, info["size"], given["size"]))
    for key in HEX:
        if given[key] and info[key] != given[key]:
            raise IngestError("%s has %s %s, the manifest says %s: verify the source first"
                              % (src, key, info[key], given[key]))


def _collect(src: str, paths: list[str], known: dict | None, staging: str | None) -> tuple[list[dict[str, Any]], set]:
    """The index entries of paths (copied below staging when given) and the paths whose copy was hashed."""
    files, hashed = [], set()
    for path in paths:
        source = os.path.join(src, *path.split("/"))
        given = _given(path, known)
        if staging is not None:
            info, did_hash = _place(source, os.path.join(staging, *path.split("/")), given)
            if did_hash:
                hashed.add(path)
        elif given is None:
            info = hash_file(source, None)
            hashed.add(path)
        else:
            info = dict(given, size=os.stat(source).st_size)
        if known is not None:
            _check_given(source, info, known[path])
        files.append({"path": path, "size": info["size"], "sha256": info["sha256"], "git_sha1": info["git_sha1"],
                      "lfs": is_lfs(path, info["size"])})
    return files, hashed


def same_files(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    """Whether two indexes' files are the same content (a git blob sha1 only compared where both know it)."""
    if [f["path"] for f in old] != [f["path"] for f in new]:
        return False
    for a, b in zip(old, new):
        if (a["size"], a["sha256"], a["lfs"]) != (b["size"], b["sha256"], b["lfs"]):
            return False
        if a.get("git_sha1") and b.get("git_sha1") and a["git_sha1"] != b["git_sha1"]:
            return False
    return True


def _read_index(snapshots: str, commit: str) -> dict[str, Any] | None:
    path = os.path.join(snapshots, commit + ".index.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _publish(snapshots: str, commit: str, staging: str, files: list[dict[str, Any]], repo_id: str,
             hashed: set) -> None:
    """Swap the staged directory in, then write the index (which is what makes the snapshot visible)."""
    index_path = os.path.join(snapshots, commit + ".index.json")
    snap_dir = os.path.join(snapshots, commit)
    if os.path.exists(index_path):
        os.unlink(index_path)  # unpublish first, then swap the directory
    if os.path.lexists(snap_dir):
        shutil.rmtree(snap_dir)
    os.rename(staging, snap_dir)
    # The identities of the files just hashed: the server trusts them without hashing them again.
    write_cache(cache_path(snapshots, commit), {f["path"]: {"key": file_key(os.lstat(os.path.join(snap_dir, *f["path"].split("/")))),
                                                            "sha256": f["sha256"]} for f in files if f["path"] in hashed})
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    atomic_write(index_path, json_bytes({"format": 1, "repo": repo_id, "commit": commit, "created": created, "files": files}))


def _commit_of(commit: str | None, manifest_commit: str | None) -> str | None:
    """The commit to ingest under: --commit, else the manifest's when it is a commit id (ModelScope may record
    the revision as asked); both given must agree."""
    if manifest_commit is None or not COMMIT.match(manifest_commit):
        return commit
    if commit is not None and commit != manifest_commit:
        raise IngestError("--commit %s is not the manifest's commit %s" % (commit, manifest_commit))
    return manifest_commit


def ingest(data: str, repo_id: str, src: str, commit: str | None = None, branches: list[str] | tuple = (),
           tags: list[str] | tuple = (), link: bool = False, force: bool = False, dry_run: bool = False,
           manifest: str | None = None) -> dict[str, Any]:
    """Add src as a snapshot of repo_id; returns what happened (changed, commit, files, bytes, refs, and
    whether the snapshot was there before and the bytes copied or, with dry_run, to copy)."""
    org, name = check_repo_id(repo_id)
    if commit is not None and not COMMIT.match(commit):
        raise StoreError("commit %r is not 40 lowercase hex digits" % commit)
    for ref in (*branches, *tags):
        if not REF_NAME.match(ref) or ".." in ref:
            raise StoreError("ref name %r is not valid (letters, digits, '.', '_', '-', '/')" % ref)
    if not os.path.isdir(src):
        raise IngestError("source %s is not a directory" % src)
    if not branches and not tags:
        branches = ["main"]
    repo_root = os.path.join(os.path.abspath(data), "repos", org, name)
    snapshots = os.path.join(repo_root, "snapshots")
    known = None
    if manifest is not None:
        manifest_commit, known = read_manifest(manifest)
        commit = _commit_of(commit, manifest_commit)
        paths = sorted(known)  # what the seed verified; nothing else in src is published
    else:
        paths = scan(src)
    if not paths:
        raise IngestError("source %s holds no files" % src)

    old_umask = os.umask(0o022)
    staging = None
    try:
        existing = _read_index(snapshots, commit) if commit else None
        if dry_run or existing is not None:
            # Only describe: a rerun over an existing snapshot must not copy gigabytes to find nothing changed.
            files, hashed = _collect(src, paths, known, None)
        else:
            os.makedirs(snapshots, exist_ok=True)
            staging = os.path.join(snapshots, ".incoming-%d-%d" % (os.getpid(), time.time_ns()))
            files, hashed = _collect(src, paths, known, staging)
        if commit is None:
            commit = content_commit((f["path"], f["sha256"]) for f in files)
            existing = _read_index(snapshots, commit)
        same = existing is not None and same_files(existing["files"], files)
        if existing is not None and not same and not force:
            raise IngestError("%s@%s already exists with other content; pass --force to replace it, or use a new commit id"
                              % (repo_id, commit))
        changed = not same
        copy_bytes = sum(f["size"] for f in files) if changed else 0
        if changed and not dry_run:
            if staging is None:
                os.makedirs(snapshots, exist_ok=True)
                staging = os.path.join(snapshots, ".incoming-%d-%d" % (os.getpid(), time.time_ns()))
                files, hashed = _collect(src, paths, known, staging)
            _publish(snapshots, commit, staging, files, repo_id, hashed)
            staging = None
        refs_path = os.path.join(repo_root, "refs.json")
        refs = {"branches": {}, "tags": {}}
        if os.path.isfile(refs_path):
            with open(refs_path, encoding="utf-8") as fh:
                refs = json.load(fh)
        new_refs = json.loads(json.dumps(refs))
        for ref in branches:
            new_refs["branches"][ref] = commit
        for ref in tags:
            new_refs["tags"][ref] = commit
        if new_refs != refs:
            changed = True
            if not dry_run:
                atomic_write(refs_path, json_bytes(new_refs))
        return {"changed": changed, "repo": repo_id, "commit": commit, "files": len(files),
                "bytes": sum(f["size"] for f in files), "refs": new_refs, "dry_run": dry_run,
                "existed": existing is not None, "copy_bytes": copy_bytes, "hashed": len(hashed)}
    finally:
        os.umask(old_umask)
        if staging and os.path.isdir(staging):
            shutil.rmtree(staging)
