"""`ingest`: add a snapshot from a local directory under a repo id and commit, and point refs at it.

Files are copied, never hard-linked: a hard link made the mirror's file and the seed's one inode, so
one corruption hit both. The copy is a reflink where the filesystem shares extents (FICLONE: Btrfs,
XFS with reflink=1; no extra disk until one side is written), else copy_file_range, else a plain copy
(the store then holds a second copy of the model on disk). Hashes (sha256, git blob sha1) are computed
from the copy as it lands. --link is accepted for old callers and copies. Files land in a staging directory that is renamed
into place, then the index is written, then refs: a reader sees the old state or the new one.
Re-ingesting the same content is a no-op (`"changed": false`), so configuration management can rerun it.
Symlinks inside the source (a Hugging Face cache snapshot is made of them) are followed; the data
directory itself never gets a symlink.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

from .store import COMMIT, REF_NAME, StoreError, check_repo_id, check_repo_path, is_lfs
from .verify import cache_path, clone_or_copy, file_key, write_cache

CHUNK = 8 << 20
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
    sha1 = hashlib.sha1(b"blob %d\0" % size)
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


def _place(src: str, dest: str) -> dict[str, Any]:
    """Copy src to dest as a new inode (reflink when possible) and hash what landed."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if clone_or_copy(os.path.realpath(src), dest, plain=False) is None:
        info = hash_file(src, dest)  # one read for both the copy and the hashes
    else:
        info = hash_file(dest, None)
    os.chmod(dest, 0o644)
    return info


def _write_json(path: str, data: dict) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def content_commit(files: list[dict[str, Any]]) -> str:
    """A commit id derived from the content, for snapshots that come without one."""
    digest = hashlib.sha1()
    for f in files:
        digest.update(("%s %s %d\n" % (f["path"], f["sha256"], f["size"])).encode())
    return digest.hexdigest()


def _describe(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for f in files:
        f["lfs"] = is_lfs(f["path"], f["size"])
    return files


def _read_index(snapshots: str, commit: str) -> dict[str, Any] | None:
    path = os.path.join(snapshots, commit + ".index.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _publish(snapshots: str, commit: str, staging: str, files: list[dict[str, Any]], repo_id: str) -> None:
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
                                                           "sha256": f["sha256"]} for f in files})
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    _write_json(index_path, {"format": 1, "repo": repo_id, "commit": commit, "created": created, "files": files})


def ingest(data: str, repo_id: str, src: str, commit: str | None = None, branches: list[str] | tuple = (),
           tags: list[str] | tuple = (), link: bool = False, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Add src as a snapshot of repo_id; returns what happened (changed, commit, files, bytes, refs)."""
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
    paths = scan(src)
    if not paths:
        raise IngestError("source %s holds no files" % src)

    old_umask = os.umask(0o022)
    staging = None
    try:
        existing = _read_index(snapshots, commit) if commit else None
        if dry_run or existing is not None:
            # Only hash: a rerun over an existing snapshot must not copy gigabytes to find nothing changed.
            files = _describe([dict(path=p, **hash_file(os.path.join(src, p), None)) for p in paths])
        else:
            os.makedirs(snapshots, exist_ok=True)
            staging = os.path.join(snapshots, ".incoming-%d-%d" % (os.getpid(), time.time_ns()))
            files = _describe([dict(path=p, **_place(os.path.join(src, p), os.path.join(staging, *p.split("/"))))
                               for p in paths])
        if commit is None:
            commit = content_commit(files)
            existing = _read_index(snapshots, commit)
        if existing is not None and existing["files"] != files and not force:
            raise IngestError("%s@%s already exists with other content; pass --force to replace it, or use a new commit id"
                              % (repo_id, commit))
        changed = existing is None or existing["files"] != files
        if changed and not dry_run:
            if staging is None:
                os.makedirs(snapshots, exist_ok=True)
                staging = os.path.join(snapshots, ".incoming-%d-%d" % (os.getpid(), time.time_ns()))
                files = _describe([dict(path=p, **_place(os.path.join(src, p), os.path.join(staging, *p.split("/"))))
                                   for p in paths])
            _publish(snapshots, commit, staging, files, repo_id)
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
                _write_json(refs_path, new_refs)
        return {"changed": changed, "repo": repo_id, "commit": commit, "files": len(files),
                "bytes": sum(f["size"] for f in files), "refs": new_refs, "dry_run": dry_run}
    finally:
        os.umask(old_umask)
        if staging and os.path.isdir(staging):
            shutil.rmtree(staging)
