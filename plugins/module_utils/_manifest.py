# SPDX-License-Identifier: Apache-2.0
"""The snapshot manifest: what model_fetch downloaded and model_verify checks against.

Location: <model_dir>/.autoglm/manifest.json. `.autoglm/` holds this collection's own state
(manifest, verify cache, quarantine) and is never counted as a model file. Format 1:

    {"format": 1, "source": "huggingface" | "modelscope" | "url" | <another hub>, "repo_id": "org/name",
     "revision": "<as asked>", "commit": "<resolved commit id>", "fetched_at": "<ISO-8601 UTC>",
     "files": [{"path": "relative/posix/path", "size": 123, "sha256": "<hex>" | null,
                "git_sha1": "<hex>" | null, "endpoint": "<base URL that served it>",
                "fetched_at": "<ISO-8601 UTC>"  (optional: when this file was downloaded)}]}

`files` is sorted by path; each file has at least one of sha256 / git_sha1; an endpoint never
carries credentials. validate() says which field is wrong; write() is atomic (_stdlib.atomic_write: temp file in the
same directory, fsync, os.replace, fsync of the directory) so a crash leaves the old or the new
manifest, never half of one. Standard library only: this runs on target nodes.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ansible_collections.autoglm.deploy.plugins.module_utils import _stdlib

# For the callers that write or record URLs through this module (code_tree, _verify): their home is _stdlib.
atomic_write_bytes = _stdlib.atomic_write
strip_credentials = _stdlib.strip_credentials

FORMAT = 1
STATE_DIR = ".autoglm"
MANIFEST_NAME = "manifest.json"
SOURCE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")  # a hub's name (_hubs.HUBS); the manifest outlives the registry
_HEX_DIGITS = {"sha256": 64, "git_sha1": 40}
_TOP_KEYS = ("format", "source", "repo_id", "revision", "commit", "fetched_at", "files")
_FILE_KEYS = ("path", "size", "sha256", "git_sha1", "endpoint")
_OPTIONAL_FILE_KEYS = ("fetched_at",)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or not format 1; the message names the field."""


def state_dir(model_dir: str) -> str:
    return os.path.join(model_dir, STATE_DIR)


def manifest_path(model_dir: str) -> str:
    return os.path.join(model_dir, STATE_DIR, MANIFEST_NAME)


def is_state_path(relpath: str) -> bool:
    """True for paths inside .autoglm/ (our state, never a model file)."""
    return relpath == STATE_DIR or relpath.startswith(STATE_DIR + "/")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_hex(value, digits: int) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{%d}" % digits, value) is not None


def check_relpath(path, where: str = "path") -> str:
    """A model file path: relative, POSIX, normalised, inside the model dir, not our state."""
    if not isinstance(path, str) or not path:
        raise ManifestError("%s must be a non-empty string, got %r" % (where, path))
    if path.startswith("/") or "\\" in path:
        raise ManifestError("%s %r must be a relative POSIX path (no leading '/', no backslash)" % (where, path))
    if _CONTROL.search(path):
        # NUL, newlines, escapes: they break file systems, logs and terminals, and no model file needs one.
        raise ManifestError("%s %r must not contain control characters" % (where, path))
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ManifestError("%s %r must be normalised: no empty, '.' or '..' components" % (where, path))
    if is_state_path(path):
        raise ManifestError("%s %r is inside %s/, which holds state, not model files" % (where, path, STATE_DIR))
    return path


def _check_endpoint(value, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ManifestError("%s must be the base URL that served the file, got %r" % (where, value))
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ManifestError("%s carries credentials; record it with strip_credentials()" % where)
    if parts.query:
        raise ManifestError("%s has a query string (tokens live there); record only the base URL" % where)


def validate_file(entry, where: str = "files[]") -> dict:
    if not isinstance(entry, dict):
        raise ManifestError("%s must be an object, got %s" % (where, type(entry).__name__))
    missing = [key for key in _FILE_KEYS if key not in entry]
    if missing:
        raise ManifestError("%s lacks %s" % (where, ", ".join(missing)))
    check_relpath(entry["path"], where + ".path")
    where = "%s (%s)" % (where, entry["path"])
    size = entry["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError("%s.size must be a non-negative integer, got %r" % (where, size))
    for algorithm, digits in _HEX_DIGITS.items():
        value = entry[algorithm]
        if value is not None and not is_hex(value, digits):
            raise ManifestError("%s.%s must be lowercase hex of %d digits or null, got %r"
                                % (where, algorithm, digits, value))
    if entry["sha256"] is None and entry["git_sha1"] is None:
        raise ManifestError("%s has neither sha256 nor git_sha1: nothing to verify it with" % where)
    _check_endpoint(entry["endpoint"], where + ".endpoint")
    out = {key: entry[key] for key in _FILE_KEYS}
    for key in _OPTIONAL_FILE_KEYS:
        if entry.get(key) is not None:
            if not isinstance(entry[key], str) or not entry[key]:
                raise ManifestError("%s.%s must be a non-empty string, got %r" % (where, key, entry[key]))
            out[key] = entry[key]
    return out


def validate(data) -> dict:
    """Check a manifest object; return it normalised (known keys, files sorted). Raises ManifestError."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object, got %s" % type(data).__name__)
    if data.get("format") != FORMAT:
        raise ManifestError("manifest format %r is not supported; this collection reads format %d"
                            % (data.get("format"), FORMAT))
    missing = [key for key in _TOP_KEYS if key not in data]
    if missing:
        raise ManifestError("the manifest lacks %s" % ", ".join(missing))
    if not isinstance(data["source"], str) or not SOURCE_RE.match(data["source"]):
        raise ManifestError("source %r is not a hub name (such as huggingface, modelscope or url)" % (data["source"],))
    for key in ("repo_id", "revision", "commit", "fetched_at"):
        if not isinstance(data[key], str) or not data[key]:
            raise ManifestError("%s must be a non-empty string, got %r" % (key, data[key]))
    if not isinstance(data["files"], list):
        raise ManifestError("files must be a list, got %s" % type(data["files"]).__name__)
    files = [validate_file(entry, "files[%d]" % index) for index, entry in enumerate(data["files"])]
    seen = set()
    for entry in files:
        if entry["path"] in seen:
            raise ManifestError("files lists %r twice" % entry["path"])
        seen.add(entry["path"])
    result = {key: data[key] for key in _TOP_KEYS}
    result["files"] = sorted(files, key=lambda entry: entry["path"])
    return result


def new(source: str, repo_id: str, revision: str, commit: str, files: list, fetched_at: str | None = None) -> dict:
    """Build (and validate) a manifest; `files` are dicts with the five file keys, in any order."""
    return validate({"format": FORMAT, "source": source, "repo_id": repo_id, "revision": revision,
                     "commit": commit, "fetched_at": fetched_at or utc_now_iso(), "files": list(files)})


def load(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError as exc:
        raise ManifestError("no manifest at %s (fetch the model with model_fetch first, or give the "
                            "expected files another way)" % path) from exc
    except OSError as exc:
        raise ManifestError("cannot read the manifest %s: %s" % (path, exc.strerror or exc)) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError("the manifest %s is not valid JSON: %s" % (path, exc)) from exc
    try:
        return validate(data)
    except ManifestError as exc:
        raise ManifestError("%s: %s" % (path, exc)) from exc


def by_path(manifest: dict) -> dict:
    return {entry["path"]: entry for entry in manifest["files"]}


def dumps(data) -> bytes:
    return _stdlib.json_bytes(data)


def write(model_dir: str, manifest: dict) -> str:
    """Validate and atomically write the manifest of `model_dir`; returns its path."""
    path = manifest_path(model_dir)
    atomic_write_bytes(path, dumps(validate(manifest)))
    return path
