# SPDX-License-Identifier: Apache-2.0
"""Verify a model directory against its expected files: the domain logic behind model_verify.

One pass: walk the directory (refusing symlinks that lead out of it), compare sizes, hash what
the cache cannot vouch for (in parallel, one thread per core), check safetensors structure,
then optionally move bad files into .autoglm/quarantine/<UTC timestamp>/ so the next fetch
re-downloads exactly those. No AnsibleModule here, so the benchmark drives the same code.

The cache (.autoglm/verify-cache.json) keys each file's hashes on (size, mtime_ns, ctime_ns,
inode, device). mtime alone could be forged (touch -d, os.utime) but ctime cannot: the kernel
sets it to the current time on every inode change, including the utime() call that restores an
mtime, and a file put in place by rename has a new inode. So a same-size replacement with its
old mtime still misses the cache. The one gap is a change inside the same ctime clock tick as
our stat ("racy" entries, as git calls them): entries whose ctime is within RACY_WINDOW_NS of
the moment we looked are re-hashed next time rather than trusted.
Standard library only: this runs on target nodes.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from datetime import datetime, timezone

from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing, _manifest, _safetensors

CACHE_NAME = "verify-cache.json"
CACHE_FORMAT = 1
QUARANTINE_DIR = "quarantine"
RACY_WINDOW_NS = 2 * 1000 * 1000 * 1000
MAX_SIGNATURE_BYTES = 64 * 1024 * 1024


class VerifyError(Exception):
    """The verification could not be carried out as asked (bad input, unsafe directory)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _matches(relpath: str, patterns) -> bool:
    return any(relpath == pattern or relpath.startswith(pattern.rstrip("/") + "/") for pattern in patterns)


def walk(root: str):
    """All files under root except .autoglm/: (files {relpath: abspath}, escapes [{path, target}]).

    Symlinks are resolved: one whose target lies outside the real root is an escape; one inside
    is followed (directories once each, so a loop cannot recurse forever).
    """
    real_root = os.path.realpath(root)
    files, escapes, seen_dirs = {}, [], {real_root}

    def visit(directory: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise VerifyError("cannot list %s: %s" % (directory, exc.strerror or exc)) from exc
        for entry in entries:
            rel = prefix + entry.name
            if _manifest.is_state_path(rel):
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not _inside(target, real_root):
                    escapes.append({"path": rel, "target": target})
                    continue
                if os.path.isdir(target):
                    if target not in seen_dirs:
                        seen_dirs.add(target)
                        visit(entry.path, rel + "/")
                    continue
                files[rel] = entry.path
            elif entry.is_dir(follow_symlinks=False):
                visit(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                files[rel] = entry.path
    visit(root, "")
    return files, escapes


def parse_checksums(text: str, where: str) -> dict:
    """`sha256sum` output ("<hex>  <name>" or "<hex> *<name>") -> {relpath: {"size": None, "sha256": hex}}."""
    expected = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not match:
            raise VerifyError("%s line %d is not '<sha256>  <file>' (sha256sum format): %r" % (where, number, line))
        name = match.group(2)
        while name.startswith("./"):
            name = name[2:]
        try:
            _manifest.check_relpath(name, "%s line %d" % (where, number))
        except _manifest.ManifestError as exc:
            raise VerifyError(str(exc)) from exc
        expected[name] = {"size": None, "sha256": match.group(1).lower(), "git_sha1": None}
    if not expected:
        raise VerifyError("%s lists no files" % where)
    return expected


def normalise_inline(files: dict) -> dict:
    """The inline mapping path -> {size, sha256 | git_sha1}, checked like a manifest entry."""
    expected = {}
    for path, spec in sorted((files or {}).items()):
        where = "files[%r]" % path
        if not isinstance(spec, dict):
            raise VerifyError("%s must be a mapping with size and sha256 or git_sha1" % where)
        unknown = sorted(set(spec) - {"size", "sha256", "git_sha1"})
        if unknown:
            raise VerifyError("%s has unknown key(s) %s; use size, sha256, git_sha1" % (where, ", ".join(unknown)))
        try:
            _manifest.check_relpath(path, where)
        except _manifest.ManifestError as exc:
            raise VerifyError(str(exc)) from exc
        entry = {"size": spec.get("size"), "sha256": spec.get("sha256"), "git_sha1": spec.get("git_sha1")}
        if entry["size"] is not None:
            try:
                entry["size"] = int(entry["size"])
            except (TypeError, ValueError) as exc:
                raise VerifyError("%s.size must be an integer, got %r" % (where, spec["size"])) from exc
        for algorithm, digits in (("sha256", 64), ("git_sha1", 40)):
            if entry[algorithm] is not None:
                entry[algorithm] = str(entry[algorithm]).lower()
                if not _manifest.is_hex(entry[algorithm], digits):
                    raise VerifyError("%s.%s must be %d hex digits, got %r" % (where, algorithm, digits, spec[algorithm]))
        if entry["sha256"] is None and entry["git_sha1"] is None:
            raise VerifyError("%s needs sha256 or git_sha1" % where)
        expected[path] = entry
    if not expected:
        raise VerifyError("files (the inline mapping) is empty")
    return expected


def from_manifest(path: str) -> dict:
    try:
        manifest = _manifest.load(path)
    except _manifest.ManifestError as exc:
        raise VerifyError(str(exc)) from exc
    return {entry["path"]: {"size": entry["size"], "sha256": entry["sha256"], "git_sha1": entry["git_sha1"]}
            for entry in manifest["files"]}


def _stat_key(stat) -> dict:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino, "device": stat.st_dev}


class Cache:
    """Hashes of files as they were at a given (size, mtime_ns, ctime_ns, inode, device)."""

    def __init__(self, path: str):
        self.path = path
        self.entries = {}
        self.dirty = False
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
            if isinstance(data, dict) and data.get("format") == CACHE_FORMAT and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError):
            self.entries = {}  # missing or damaged: start over, it is only a cache

    def lookup(self, rel: str, stat, algorithms) -> dict | None:
        entry = self.entries.get(rel)
        if not isinstance(entry, dict):
            return None
        key = _stat_key(stat)
        if any(entry.get(name) != value for name, value in key.items()):
            return None
        if entry.get("looked_ns", 0) - key["ctime_ns"] < RACY_WINDOW_NS:
            return None
        if not all(isinstance(entry.get(name), str) for name in algorithms):
            return None
        return {name: entry[name] for name in algorithms}

    def store(self, rel: str, stat, looked_ns: int, hashes: dict) -> None:
        entry = dict(_stat_key(stat), looked_ns=looked_ns)
        entry.update({name: hashes[name] for name in _hashing.ALGORITHMS if name in hashes})
        if self.entries.get(rel) != entry:
            self.entries[rel] = entry
            self.dirty = True

    def keep_only(self, rels) -> None:
        for rel in set(self.entries) - set(rels):
            del self.entries[rel]
            self.dirty = True

    def save(self) -> None:
        _manifest.atomic_write_bytes(self.path, _manifest.dumps({"format": CACHE_FORMAT, "files": self.entries}))


class Verifier:
    """Compare a model directory with `expected` ({relpath: {size, sha256, git_sha1}})."""

    def __init__(self, root: str, expected: dict, mode: str = "cached", extra_files: str = "report",
                 ignore_paths=(), quarantine: bool = False, safetensors: bool = True, hash_extra_files: bool = False,
                 jobs: int = 0, check_mode: bool = False, exclude=()):
        self.root = root
        self.expected = expected
        self.mode = mode
        self.extra_files = extra_files
        self.ignore_paths = list(ignore_paths)
        self.exclude = set(exclude)
        self.quarantine = quarantine
        self.safetensors = safetensors
        self.hash_extra_files = hash_extra_files
        self.jobs = jobs or _hashing.default_jobs()
        self.check_mode = check_mode
        self.state = _manifest.state_dir(root)

    def run(self) -> dict:
        started = time.monotonic()
        if not os.path.isdir(self.root):
            raise VerifyError("model directory %s does not exist or is not a directory" % self.root)
        present, escapes = walk(self.root)
        if escapes:
            raise VerifyError("refusing to verify %s: symlink(s) lead outside the model directory: %s" % (
                self.root, "; ".join("%s -> %s" % (item["path"], item["target"]) for item in escapes)))
        for rel in self.exclude:
            present.pop(rel, None)
        missing = sorted(rel for rel in self.expected if rel not in present)
        extra = sorted(rel for rel in present if rel not in self.expected and not _matches(rel, self.ignore_paths))

        cache = Cache(os.path.join(self.state, CACHE_NAME))
        problems = {}  # rel -> {"path", "reason", "expected", "actual"}
        digests = {}   # rel -> {"size", "sha256", ...}
        to_hash, stats, cached_count = {}, {}, 0
        looked_ns = time.time_ns()
        candidates = [rel for rel in present if rel in self.expected]
        if self.hash_extra_files:
            candidates += extra
        for rel in candidates:
            try:
                stat = os.stat(present[rel])
            except OSError as exc:
                problems[rel] = {"path": rel, "reason": "unreadable", "expected": "a readable file",
                                 "actual": exc.strerror or str(exc)}
                continue
            want = self.expected.get(rel, {})
            if want.get("size") is not None and stat.st_size != want["size"]:
                problems[rel] = {"path": rel, "reason": "size", "expected": want["size"], "actual": stat.st_size}
                continue
            algorithms = (_hashing.SHA256, _hashing.GIT_SHA1) if want.get("git_sha1") else (_hashing.SHA256,)
            stats[rel] = stat
            hit = cache.lookup(rel, stat, algorithms) if self.mode == "cached" else None
            if hit is not None:
                digests[rel] = dict(hit, size=stat.st_size)
                cached_count += 1
            else:
                to_hash[present[rel]] = algorithms
        by_abs = {present[rel]: rel for rel in stats}
        hashed_bytes = 0
        for path, result in _hashing.hash_files(to_hash, self.jobs).items():
            rel = by_abs[path]
            if isinstance(result, _hashing.HashError):
                problems[rel] = {"path": rel, "reason": "unreadable", "expected": "a readable file", "actual": str(result)}
                continue
            hashed_bytes += result["size"]
            digests[rel] = result
            cache.store(rel, stats[rel], looked_ns, result)
        for rel in sorted(digests):
            want = self.expected.get(rel)
            if not want:
                continue
            for algorithm in (_hashing.SHA256, _hashing.GIT_SHA1):
                if want.get(algorithm) and digests[rel].get(algorithm) != want[algorithm]:
                    problems[rel] = {"path": rel, "reason": algorithm, "expected": want[algorithm],
                                     "actual": digests[rel].get(algorithm)}
                    break

        structure = self._check_safetensors(present, problems) if self.safetensors else []
        bad = sorted(set(problems) | {item["path"] for item in structure if item["path"] in present})
        quarantined = self._quarantine(present, bad) if self.quarantine and bad else []
        moved = {item["path"] for item in quarantined}
        cache.keep_only(rel for rel in digests if rel not in moved)
        if cache.dirty and not self.check_mode:
            # A read-only model directory can still be verified, just not cached.
            with contextlib.suppress(OSError):
                cache.save()
        verified = sorted(rel for rel in digests if rel in self.expected and rel not in bad)
        return {
            "verified": verified,
            "mismatched": [problems[rel] for rel in sorted(problems)],
            "missing": missing,
            "extra": extra,
            "safetensors_errors": structure,
            "quarantined": quarantined,
            "files": {rel: digests[rel] for rel in sorted(digests)},
            "stats": {"files_hashed": len(to_hash), "files_from_cache": cached_count, "bytes_hashed": hashed_bytes,
                      "seconds": round(time.monotonic() - started, 4), "jobs": self.jobs},
        }

    def _check_safetensors(self, present: dict, problems: dict) -> list:
        errors, headers = [], {}
        for rel in sorted(present):
            if rel.endswith(".safetensors") and rel not in problems:
                try:
                    headers[rel] = _safetensors.read_header(present[rel])
                except _safetensors.SafetensorsError as exc:
                    headers[rel] = exc
                    errors.append({"path": rel, "error": str(exc)})
        for rel in sorted(present):
            if not rel.endswith(_safetensors.INDEX_SUFFIX):
                continue
            base = rel.rpartition("/")[0]
            prefix = base + "/" if base else ""
            local = {name[len(prefix):]: header for name, header in headers.items() if name.startswith(prefix)}
            # Shards that failed a size/hash check exist but were not parsed; don't call them absent.
            local.update({name[len(prefix):]: _safetensors.SafetensorsError("not checked")
                          for name in problems if name.startswith(prefix) and name.endswith(".safetensors")})
            for shard, message in _safetensors.check_index(present[rel], local):
                errors.append({"path": prefix + shard if shard else rel,
                               "error": "%s: %s" % (rel, message) if shard else message})
        return errors

    def _quarantine(self, present: dict, bad: list) -> list:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target_root = os.path.join(self.state, QUARANTINE_DIR, stamp)
        moved = []
        for rel in bad:
            if rel not in present:
                continue
            target = os.path.join(target_root, rel)
            moved.append({"path": rel, "to": target})
            if self.check_mode:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # The directory entry moves, not the link target: a symlinked file inside the
            # model dir leaves its target in place for the next fetch to overwrite.
            os.rename(os.path.join(self.root, rel), target)
        return moved


def read_signature(path: str):
    """Content of the signature file on the node, or None when it is absent."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size > MAX_SIGNATURE_BYTES:
        raise VerifyError("signature %s is %d bytes, more than the %d a model signature can need"
                          % (path, size, MAX_SIGNATURE_BYTES))
    with open(path, "rb") as handle:
        return handle.read()
