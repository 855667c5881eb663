"""The HTTP server: Hugging Face and ModelScope download APIs over the store, read-only.

One thread per connection (ThreadingHTTPServer), HTTP/1.1 keep-alive, file bodies sent with
os.sendfile (ranges included), so the kernel copies page cache to socket and many concurrent
connections cost little CPU. Endpoints:

    GET  /health
    GET  /api/models/ORG/NAME[/revision/REV][?blobs=true]         model info (siblings, sha)
    GET  /api/models/ORG/NAME/tree/REV[/PATH][?recursive=true]      tree, paginated with Link rel="next"
    POST /api/models/ORG/NAME/paths-info/REV                       form or JSON: paths=..., expand=...
    GET  /api/models/ORG/NAME/refs                                 branches and tags
    GET|HEAD /ORG/NAME/resolve/REV/PATH                            file, Range, ETag, X-Repo-Commit, X-Linked-*
    GET  /api/v1/models/ORG/NAME/repo/files?Revision=&Recursive=&Root=   ModelScope file list
    GET|HEAD /api/v1/models/ORG/NAME/repo?Revision=&FilePath=      ModelScope file, Range
    GET  /api/v1/models/ORG/NAME/revisions                         ModelScope branches and tags
    GET  /api/v1/models/ORG/NAME                                   ModelScope model info
    GET|HEAD /wheels/[SET/]                                        (--wheelhouse) pip --find-links page, no token
    GET|HEAD /wheels/[SET/]FILE                                    a wheel or sdist, Range

No complete body of a store file is sent unless its bytes hash to the sha256 of its index. A file
whose identity (dev, inode, size, mtime_ns, ctime_ns) is not yet known good is hashed as it goes out
and its last piece (VERIFY_CHUNK) is held until the digest is in: on a mismatch the connection is cut
before it, so the client sees a short body and retries or falls back, never a whole bad file. A Range
that is not the whole file cannot be judged alone: the first one hashes the whole file before any byte
is sent (about 3 s per 5 GB at 1.5 GB/s, once per identity; concurrent parts wait for that one hash);
later ones, and every request after a good verdict, go out with sendfile, unhashed. Identities that
`ingest` or `verify` recorded in SHA.verified.json count as known good. A bad file is quarantined: the
QUARANTINED line is logged and every later request for it gets 503 with Retry-After (HEAD too) until it
is replaced (a new identity), e.g. by `autoglm-mirror verify --src`. The server stays read-only to the
store (a compromised server cannot rewrite models): moving the bad file aside is the repair's job.

The wheelhouse listing hashes each file once per identity (and the whole wheelhouse in the background
at start), so a listing never rehashes gigabytes.

Errors carry Hugging Face's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) and a JSON
body. Protected repos need `Authorization: Bearer TOKEN` (401 otherwise, with RepoNotFound when no token
was sent, as the hub does). The access log has method, path (no query string), status and bytes: never a
header, so never a token.

Hostile clients: every header line goes through Handler.send_header, which escapes control characters;
paths and query values holding them are refused with 400. A body is framed by one numeric Content-Length
or the request is refused (Transfer-Encoding: 501) and the connection closed; a body left unread closes
the connection too, so it is never parsed as the next request. Request line, headers and body must arrive
within --request-timeout, idle keep-alive connections close after --idle-timeout, and past
--max-connections a connection gets a 503 with Retry-After from the accept loop. With --tls-cert and
--tls-key it serves HTTPS (TLS 1.2 or later; the handshake runs in the connection's thread, under the
deadline; bodies are encrypted in user space, without sendfile).
"""
from __future__ import annotations

import base64
import calendar
import contextlib
import fnmatch
import hashlib
import hmac
import html
import json
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import __version__
from .faults import Faults
from .store import Snapshot, Store, StoreError, check_repo_path, lfs_pointer
from .verify import Verdicts, file_key, sha256_fd

SEND_CHUNK = 8 << 20
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# More digits than any file size has: a longer number is clamped instead of parsed (int() refuses 4300+ digits).
MAX_RANGE_DIGITS = 19
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_BODY = 4 << 20
MS_DEFAULT_REVISIONS = ("master", "main")
# A file being hashed on its way out is sent in pieces this size; the last piece waits for the verdict.
VERIFY_CHUNK = 1 << 20
# Short: clients honour Retry-After on each of their retries (huggingface_hub, model_fetch: 5 each) before they try
# their next endpoint, and a quarantined file stays bad until a rerun repairs it.
QUARANTINE_RETRY_AFTER = 1
WHEEL_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,250}\.(?:whl|tar\.gz)$")
WHEEL_SET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BadBytes(Exception):
    """The bytes read for a response do not hash to what the index advertises."""


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class Config:
    def __init__(self, store: Store, tokens: list[str] | None = None, protected: list[str] | None = None,
                 faults: Faults | None = None, page_size: int = 1000, access_log: bool = True,
                 send_timeout: float = 120.0, idle_timeout: float = 30.0, request_timeout: float = 60.0,
                 max_connections: int = 512, wheelhouse: str | None = None):
        self.store = store
        self.wheelhouse = os.path.abspath(wheelhouse) if wheelhouse else None
        self.verdicts = Verdicts()  # store files found good or bad, by identity
        self.wheel_hashes: dict[tuple, str] = {}  # wheel sha256 by identity, so a listing rehashes nothing
        self.tokens = [t for t in (tokens or []) if t]
        self.protected = list(protected or [])
        self.faults = faults or Faults()
        self.page_size = page_size
        self.access_log = access_log
        self.send_timeout = send_timeout
        self.idle_timeout = idle_timeout  # a keep-alive connection waiting longer for its next request is closed
        self.request_timeout = request_timeout  # request line, headers and body must arrive within this
        self.max_connections = max_connections
        self.log_lock = threading.Lock()

    def wheel_files(self, folder: str = "") -> list[tuple[str, str]]:
        """(href, full path) of the wheels and sdists in the wheelhouse (folder '') and its set folders, or one set."""
        base = os.path.join(self.wheelhouse or "", folder) if folder else self.wheelhouse or ""
        out: list[tuple[str, str]] = []
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return out
        for name in names:
            full = os.path.join(base, name)
            if WHEEL_FILE.match(name) and ".." not in name and os.path.isfile(full) and not os.path.islink(full):
                out.append(((folder + "/" if folder else "") + name, full))
            elif not folder and WHEEL_SET.match(name) and os.path.isdir(full) and not os.path.islink(full):
                out.extend(self.wheel_files(name))
        return out

    def wheel_sha256(self, full: str) -> str | None:
        """sha256 of a wheel, hashed once per identity (dev, inode, size, mtime, ctime); None if it vanished."""
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            key = tuple(file_key(os.fstat(fd)))
            digest = self.wheel_hashes.get(key)
            if digest is None:
                digest = sha256_fd(fd, key[2])
                with self.log_lock:
                    self.wheel_hashes[key] = digest
            return digest
        finally:
            os.close(fd)

    def warm_wheels(self) -> None:
        """Hash the wheelhouse once at start, so the first listing does not wait for gigabytes."""
        for _href, full in self.wheel_files():
            with contextlib.suppress(Exception):
                self.wheel_sha256(full)

    def is_protected(self, repo_id: str) -> bool:
        return any(fnmatch.fnmatchcase(repo_id, pattern) for pattern in self.protected)

    def token_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode()
        # Compare against every token so the time taken does not tell which one nearly matched.
        return any([hmac.compare_digest(given, t.encode()) for t in self.tokens])  # pylint: disable=use-a-generator


def split_path(raw: str) -> list[str]:
    """Percent-decode each '/'-separated segment (traversal is refused where a segment is used as a path)."""
    return [unquote(seg, errors="strict") for seg in raw.split("/")[1:]]


def header_value(value: Any) -> str:
    """A header value that cannot end the header: control characters (CR, LF...) and non-ASCII are escaped."""
    text = str(value).encode("ascii", "backslashreplace").decode()
    return CONTROL_CHARS.sub(lambda m: "\\x%02x" % ord(m.group()), text)


def _range_number(digits: str) -> int:
    return int(digits) if len(digits) <= MAX_RANGE_DIGITS else 10 ** MAX_RANGE_DIGITS


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive) for one satisfiable range; None to serve it all; 'unsatisfiable' for 416."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if not match:
        return None  # multiple ranges or other units: RFC 9110 lets us answer with the whole body
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = _range_number(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = _range_number(first)
    end = _range_number(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "autoglm-mirror/" + __version__

    def version_string(self) -> str:
        return self.server_version
    config: Config  # set on the subclass made by make_server

    def setup(self) -> None:
        self.timeout = self.config.idle_timeout
        self.server.watch(self.request, self.config.request_timeout)  # covers a slow TLS handshake too
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def finish(self) -> None:
        self.server.unwatch(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # ---- plumbing -------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        if self.config.access_log:
            with self.config.log_lock:
                sys.stderr.write("%s %s\n" % (self.address_string(), format % args))
                sys.stderr.flush()

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Called when the status line goes out; the line is written once the body is done (or failed).
        self._status = getattr(code, "value", code)

    def handle_one_request(self) -> None:
        self._sent = 0
        self._status = None
        self._body_read = False
        self._body_length: int | None = 0
        # The request deadline runs from the wait for the request line until the answer starts.
        self.server.watch(self.connection, self.config.idle_timeout + self.config.request_timeout)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, ssl.SSLError, ValueError):
            self.close_connection = True  # the client went away or was cut off: nothing to answer, nothing to log
        finally:
            self.server.unwatch(self.connection)
            if self._status is not None:
                path = urlsplit(getattr(self, "path", "") or "").path
                self.log_message('"%s %s" %s %d', getattr(self, "command", "-"), path, self._status, self._sent)

    def send_header(self, keyword: str, value: Any) -> None:
        # The one place header lines are written (ours and the standard library's): nothing can split them.
        if not HEADER_NAME.match(keyword):
            raise ValueError("header name %r is not a token" % keyword)
        super().send_header(keyword, header_value(value))

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.unwatch(self.connection)  # the request is in; sending is bounded by send_timeout
        super().send_response(code, message)

    def _send_headers(self, status: int, headers: dict[str, Any]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()

    def send_json(self, status: int, data: Any, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self._send_headers(status, {"Content-Type": "application/json; charset=utf-8", "Content-Length": len(body),
                                    **(headers or {})})
        if self.command != "HEAD":
            self.wfile.write(body)
        self._sent = len(body)

    def send_http_error(self, err: HttpError) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = err.message
        if self.path.startswith("/api/v1/"):
            body = {"Code": err.status, "Message": err.message, "Success": False, "RequestId": ""}
        else:
            body = {"error": err.message}
        self.send_json(err.status, body, headers)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            self._body_length = None
            self._body_length = self.declared_length()
            url = urlsplit(self.path)
            self.query = parse_qs(url.query, keep_blank_values=True)
            try:
                parts = split_path(url.path)
            except UnicodeDecodeError:
                raise HttpError(400, "path is not valid UTF-8", "BadRequest") from None
            values = [*parts, *self.query, *(v for vs in self.query.values() for v in vs)]
            if any(CONTROL_CHARS.search(v) for v in values):
                raise HttpError(400, "control characters in the path or query", "BadRequest")
            self.route(parts)
            if self._body_length and not self._body_read:
                self.close_connection = True  # an unread body would be parsed as the next request
        except HttpError as err:
            self._discard_body()
            self.send_http_error(err)
        except StoreError as err:
            self._discard_body()
            self.send_http_error(HttpError(400, str(err), "BadRequest"))
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception as err:  # a bug must not kill the connection thread silently
            self.log_message("internal error: %s: %s", type(err).__name__, err)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.send_http_error(HttpError(500, "internal server error"))

    def declared_length(self) -> int:
        """The framing rule: a body is framed by one Content-Length of digits, or the request is refused."""
        if self.headers.get_all("Transfer-Encoding"):
            raise HttpError(501, "Transfer-Encoding is not supported: send Content-Length", "BadRequest")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        if len(values) > 1:
            raise HttpError(400, "conflicting Content-Length headers", "BadRequest")
        value = values.pop()
        if not value.isdigit() or not value.isascii() or len(value) > MAX_RANGE_DIGITS:
            raise HttpError(400, "Content-Length is not a number", "BadRequest")
        return int(value)

    def _discard_body(self) -> None:
        """Read an unread small body so keep-alive stays in step; otherwise close after the answer."""
        length = self._body_length
        if self._body_read or length == 0:
            return
        if length is None or length > MAX_BODY:
            self.close_connection = True
            return
        self._body_read = True
        if len(self.rfile.read(length)) < length:
            self.close_connection = True

    def q(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return self.q(name).lower() in ("1", "true", "yes")

    # ---- routing --------------------------------------------------------------------------------
    def route(self, parts: list[str]) -> None:
        method = self.command
        if parts == ["health"]:
            self.send_json(200, {"status": "ok", "version": __version__, "repos": len(self.config.store.repo_ids())})
            return
        if parts and parts[0] == "wheels" and self.config.wheelhouse and method in ("GET", "HEAD"):
            return self.wheels(parts[1:])
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = parts[2] + "/" + parts[3], parts[4:]
            self.inject_api_failure()
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self.paths_info(repo_id, rest[1])
            if method in ("GET", "HEAD"):
                if not rest:
                    return self.model_info(repo_id, "main")
                if len(rest) == 2 and rest[0] == "revision":
                    return self.model_info(repo_id, rest[1])
                if len(rest) >= 2 and rest[0] == "tree":
                    return self.tree(repo_id, rest[1], "/".join(rest[2:]))
                if rest == ["refs"]:
                    return self.refs(repo_id)
        if len(parts) >= 5 and parts[:3] == ["api", "v1", "models"] and method in ("GET", "HEAD"):
            repo_id, rest = parts[3] + "/" + parts[4], parts[5:]
            if rest == ["repo", "files"]:
                self.inject_api_failure()
                return self.ms_files(repo_id)
            if rest == ["repo"]:
                return self.ms_file(repo_id)
            if rest == ["revisions"]:
                self.inject_api_failure()
                return self.ms_revisions(repo_id)
            if not rest:
                self.inject_api_failure()
                return self.ms_model(repo_id)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
        raise HttpError(404, "no such endpoint: %s %s" % (method, urlsplit(self.path).path))

    # ---- lookups --------------------------------------------------------------------------------
    def authorize(self, repo_id: str) -> None:
        if self.config.is_protected(repo_id) and not self.config.token_ok(self.headers.get("Authorization")):
            given = self.headers.get("Authorization")
            # As the hub does: huggingface_hub turns RepoNotFound on a 401 into "make sure you are authenticated";
            # this exact message for a wrong token makes it say the credentials are invalid.
            message = ("Invalid credentials in Authorization header" if given
                       else "Repository %s needs a token: pass one (Authorization: Bearer TOKEN)" % repo_id)
            raise HttpError(401, message, None if given else "RepoNotFound",
                            {"WWW-Authenticate": 'Bearer realm="autoglm-mirror"'})

    def repo(self, repo_id: str):
        """The repository a request names, once the request may see it (404 when it does not exist)."""
        self.authorize(repo_id)
        repo = self.config.store.repo(repo_id)
        if not repo.exists():
            raise HttpError(404, "Repository %s not found" % repo_id, "RepoNotFound")
        return repo

    def snapshot(self, repo_id: str, revision: str, ms: bool = False) -> Snapshot:
        repo = self.repo(repo_id)
        commit = None
        # ModelScope clients ask for master by default; a repo ingested with main only serves main for it.
        for rev in (MS_DEFAULT_REVISIONS if ms and revision in ("", "master") else (revision,)):
            commit = repo.resolve(rev)
            if commit:
                break
        snap = repo.snapshot(commit) if commit else None
        if snap is None:
            raise HttpError(404, "Revision %s not found in %s" % (revision or "master", repo_id), "RevisionNotFound")
        return snap

    def file_entry(self, snap: Snapshot, path: str) -> dict[str, Any]:
        try:
            check_repo_path(path)
        except StoreError as err:
            raise HttpError(400, str(err), "BadRequest") from None
        entry = snap.files.get(path)
        if entry is None:
            raise HttpError(404, "Entry %s not found in %s@%s" % (path, snap.repo_id, snap.commit), "EntryNotFound")
        return entry

    # ---- Hugging Face ---------------------------------------------------------------------------
    def hf_entry(self, snap: Snapshot, path: str, expand: bool) -> dict[str, Any]:
        if path in snap.dirs:
            out: dict[str, Any] = {"type": "directory", "oid": snap.dir_oid(path), "size": 0, "path": path}
        else:
            f = snap.files[path]
            out = {"type": "file", "oid": snap.blob_id(f), "size": f["size"], "path": path}
            if f["lfs"]:
                out["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
        if expand:
            out["lastCommit"] = {"id": snap.commit, "title": "ingest", "date": snap.created}
        return out

    def model_info(self, repo_id: str, revision: str) -> None:
        snap = self.snapshot(repo_id, revision)
        blobs = self.flag("blobs")
        siblings = []
        for path in sorted(snap.files):
            f = snap.files[path]
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=f["size"], blobId=snap.blob_id(f))
                if f["lfs"]:
                    sib["lfs"] = {"sha256": f["sha256"], "size": f["size"],
                                  "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
            siblings.append(sib)
        self.send_json(200, {
            "_id": snap.commit[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": snap.commit, "lastModified": snap.created, "createdAt": snap.created,
            "private": self.config.is_protected(repo_id), "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(f["size"] for f in snap.files.values()),
        })

    def tree(self, repo_id: str, revision: str, path: str) -> None:
        snap = self.snapshot(repo_id, revision)
        path = path.strip("/")
        if path:
            self.file_entry_or_dir(snap, path)
        if path in snap.files:
            raise HttpError(404, "%s is a file, not a directory" % path, "EntryNotFound")
        recursive, expand = self.flag("recursive"), self.flag("expand")
        entries = snap.walk(path, recursive)
        try:
            offset = int(base64.urlsafe_b64decode(self.q("cursor").encode()).decode() or 0) if self.q("cursor") else 0
        except ValueError:
            raise HttpError(400, "cursor is not valid", "BadRequest") from None
        limit = self.config.page_size
        try:
            limit = max(1, min(limit, int(self.q("limit") or limit)))
        except ValueError:
            raise HttpError(400, "limit is not a number", "BadRequest") from None
        page = [self.hf_entry(snap, p, expand) for p in entries[offset: offset + limit]]
        headers = {}
        if offset + limit < len(entries):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            query = dict((k, v[0]) for k, v in self.query.items())
            query["cursor"] = cursor
            qs = "&".join("%s=%s" % (quote(k, safe=""), quote(v, safe="")) for k, v in sorted(query.items()))
            scheme = self.headers.get("X-Forwarded-Proto", "http")
            host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
            headers["Link"] = '<%s://%s%s?%s>; rel="next"' % (scheme, host, urlsplit(self.path).path, qs)
        self.send_json(200, page, headers)

    def file_entry_or_dir(self, snap: Snapshot, path: str) -> None:
        try:
            check_repo_path(path)
        except StoreError as err:
            raise HttpError(400, str(err), "BadRequest") from None
        if path not in snap.files and path not in snap.dirs:
            raise HttpError(404, "Entry %s not found in %s@%s" % (path, snap.repo_id, snap.commit), "EntryNotFound")

    def read_body(self) -> bytes:
        length = self._body_length or 0
        if length > MAX_BODY:
            raise HttpError(413, "request body too large", "BadRequest")
        self._body_read = True
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            raise ConnectionResetError("body ended early")
        return body

    def paths_info(self, repo_id: str, revision: str) -> None:
        body = self.read_body()
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            try:
                data = json.loads(body or b"{}")
            except (ValueError, RecursionError):
                raise HttpError(400, "body is not JSON (or nested too deeply)", "BadRequest") from None
            if not isinstance(data, dict):
                raise HttpError(400, "body is not a JSON object", "BadRequest")
            paths, expand = data.get("paths", []), bool(data.get("expand"))
            if isinstance(paths, str):
                paths = [paths]
        else:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand", ["false"])[0].lower() in ("1", "true"))
        snap = self.snapshot(repo_id, revision)
        out = []
        for path in paths:
            path = str(path).strip("/")
            if path in snap.files or (path and path in snap.dirs):
                out.append(self.hf_entry(snap, path, expand))
        self.send_json(200, out)

    def refs(self, repo_id: str) -> None:
        repo = self.repo(repo_id)
        refs = repo.refs()
        self.send_json(200, {
            "branches": [{"name": n, "ref": "refs/heads/" + n, "targetCommit": c} for n, c in sorted(refs["branches"].items())],
            "tags": [{"name": n, "ref": "refs/tags/" + n, "targetCommit": c} for n, c in sorted(refs["tags"].items())],
            "converts": [],
        })

    def resolve(self, repo_id: str, revision: str, path: str) -> None:
        snap = self.snapshot(repo_id, revision)
        self.send_file(snap, path)

    # ---- ModelScope -----------------------------------------------------------------------------
    def ms_files(self, repo_id: str) -> None:
        snap = self.snapshot(repo_id, self.q("Revision"), ms=True)
        root = self.q("Root").strip("/")
        if root:
            self.file_entry_or_dir(snap, root)
            if root in snap.files:
                raise HttpError(404, "%s is a file, not a directory" % root, "EntryNotFound")
        recursive = self.q("Recursive").lower() in ("1", "true")
        files = []
        for path in snap.walk(root, recursive):
            name = path.rsplit("/", 1)[-1]
            if path in snap.dirs:
                files.append({"Name": name, "Path": path, "Type": "tree", "Size": 0, "Sha256": "", "IsLFS": False,
                              "Mode": "040000", "Id": snap.dir_oid(path), "Revision": snap.commit, "CommitId": snap.commit})
            else:
                f = snap.files[path]
                files.append({"Name": name, "Path": path, "Type": "blob", "Size": f["size"], "Sha256": f["sha256"],
                              "IsLFS": f["lfs"], "Mode": "100644", "Id": snap.blob_id(f), "Revision": snap.commit,
                              "CommitId": snap.commit, "CommittedDate": 0, "CommitMessage": "ingest"})
        self.send_json(200, {"Code": 200, "Data": {"Files": files, "LatestCommitter": None}, "Message": "success",
                             "Success": True, "RequestId": ""})

    def ms_file(self, repo_id: str) -> None:
        path = self.q("FilePath")
        if not path:
            raise HttpError(400, "FilePath is required", "BadRequest")
        snap = self.snapshot(repo_id, self.q("Revision"), ms=True)
        self.send_file(snap, path)

    def ms_revisions(self, repo_id: str) -> None:
        repo = self.repo(repo_id)
        refs = repo.refs()

        def created_at(commit: str) -> int:
            snap = repo.snapshot(commit)  # when the revision was ingested
            if snap is None:
                return 0
            return int(calendar.timegm(time.strptime(snap.created[:19], "%Y-%m-%dT%H:%M:%S")))

        def items(kind: str) -> list[dict[str, Any]]:
            # Newest first, as ModelScope lists them: its client takes the newest tag older than its release.
            out = [{"Revision": n, "CommitId": c, "CreatedAt": created_at(c), "Message": ""}
                   for n, c in sorted(refs[kind].items())]
            return sorted(out, key=lambda item: -item["CreatedAt"])
        self.send_json(200, {"Code": 200, "Data": {"RevisionMap": {"Branches": items("branches"), "Tags": items("tags")}},
                             "Message": "success", "Success": True, "RequestId": ""})

    def ms_model(self, repo_id: str) -> None:
        snap = self.snapshot(repo_id, "", ms=True)
        org, name = repo_id.split("/")
        self.send_json(200, {"Code": 200, "Data": {"Path": org, "Name": name, "ModelId": repo_id, "Revision": snap.commit,
                                                   "Id": snap.commit[:12]}, "Message": "success", "Success": True})

    # ---- the fleet's wheelhouse (public: no token) ------------------------------------------------
    def wheels(self, rest: list[str]) -> None:
        if not rest:
            self._send_headers(301, {"Location": "/wheels/", "Content-Length": 0})
            return
        if rest[-1] == "" and len(rest) <= 2:
            folder = rest[0] if len(rest) == 2 else ""
            if folder and not (WHEEL_SET.match(folder) and os.path.isdir(os.path.join(self.config.wheelhouse, folder))):
                raise HttpError(404, "no wheel set %s" % folder, "EntryNotFound")
            return self.wheel_index(folder)
        if len(rest) in (1, 2) and all(WHEEL_SET.match(p) for p in rest[:-1]) and WHEEL_FILE.match(rest[-1]) \
                and ".." not in rest[-1]:
            return self.wheel_file(os.path.join(self.config.wheelhouse, *rest), "/".join(rest))
        raise HttpError(404, "no such wheel: %s (names end in .whl or .tar.gz)" % "/".join(rest), "EntryNotFound")

    def wheel_index(self, folder: str) -> None:
        """A PEP 503 style page pip reads with --find-links: one link per file, its sha256 in the fragment."""
        lines = ["<!DOCTYPE html>", "<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
                 "<title>wheelhouse</title></head><body>"]
        for href, full in self.config.wheel_files(folder):
            digest = self.config.wheel_sha256(full)
            if digest is None:
                continue
            href = href.split("/", 1)[1] if folder else href
            lines.append('<a href="%s#sha256=%s">%s</a><br>' % (html.escape(quote(href), quote=True), digest,
                                                                html.escape(href.rsplit("/", 1)[-1])))
        lines.append("</body></html>\n")
        body = "\n".join(lines).encode()
        self._send_headers(200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": len(body),
                                 "Cache-Control": "no-cache"})
        if self.command != "HEAD":
            self.wfile.write(body)
        self._sent = len(body)

    def wheel_file(self, full: str, name: str) -> None:
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise HttpError(404, "no such wheel: %s" % name, "EntryNotFound") from None
        try:
            st = os.fstat(fd)
            if not os.path.stat.S_ISREG(st.st_mode):
                raise HttpError(404, "no such wheel: %s" % name, "EntryNotFound")
            size = st.st_size
            headers: dict[str, Any] = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            digest = self.config.wheel_hashes.get(tuple(file_key(st)))
            if digest:
                headers["ETag"] = '"%s"' % digest
            planned = self.plan_range(size, headers, parse_range(self.headers.get("Range"), size))
            if planned is None:
                return
            status, start, _end, length = planned
            self._send_headers(status, headers)
            if self.command != "HEAD" and length:
                self.send_body(fd, start, length, name)
        finally:
            os.close(fd)

    # ---- faults ---------------------------------------------------------------------------------
    def inject_api_failure(self) -> None:
        faults = self.config.faults
        if faults.fail_first and faults.should_fail(False, ""):
            self.raise_injected()

    def raise_injected(self) -> None:
        status = self.config.faults.fail_status
        headers = {"Retry-After": self.config.faults.retry_after} if status in (429, 503) else {}
        raise HttpError(status, "injected failure (fault control --fail-first)", None, headers)

    # ---- file bodies ----------------------------------------------------------------------------
    def send_file(self, snap: Snapshot, path: str) -> None:
        faults = self.config.faults
        entry = self.file_entry(snap, path)
        if faults.active:
            if faults.should_fail(True, path):
                self.raise_injected()
            if faults.first_byte_delay and faults.matches(path):
                time.sleep(faults.first_byte_delay)
        try:
            fd, st = snap.open_file(path)
        except (PermissionError, FileNotFoundError, OSError) as err:
            self.log_message("refused %s in %s@%s: %s", path, snap.repo_id, snap.commit, err)
            raise HttpError(404, "Entry %s not found in %s@%s" % (path, snap.repo_id, snap.commit), "EntryNotFound") from None
        try:
            key = file_key(st)
            label = "%s@%s/%s" % (snap.repo_id, snap.commit, path)
            if st.st_size != entry["size"]:
                self.quarantine(key, label, "size %d, the index says %d" % (st.st_size, entry["size"]))
            self.refuse_quarantined(key, label)
            trusted = self.trusted(snap, path, entry, key)
            size = st.st_size
            etag = '"%s"' % snap.etag(entry)
            headers: dict[str, Any] = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": etag,
                "X-Linked-Etag": etag,
                "X-Linked-Size": entry["size"],
                "X-Repo-Commit": snap.commit,
            }
            wanted = None if faults.ignore_range and faults.matches(path) else parse_range(self.headers.get("Range"), size)
            planned = self.plan_range(size, headers, wanted)
            if planned is None:
                return
            status, start, end, length = planned
            check = None
            if not trusted and self.command != "HEAD" and length:
                if start == 0 and end == size - 1:
                    check = (hashlib.sha256(), entry["sha256"], size, key, label)  # hashed on the way out
                else:
                    # A part cannot be judged alone: hash the whole file once (later parts find the verdict).
                    self.verify_whole(fd, key, entry["sha256"], label)
            self._send_headers(status, headers)
            if self.command == "HEAD" or length == 0:
                return
            self.send_body(fd, start, length, path, check)
        finally:
            os.close(fd)

    def plan_range(self, size: int, headers: dict[str, Any], wanted: tuple[int, int] | str | None
                   ) -> tuple[int, int, int, int] | None:
        """(status, start, end, length) with Content-Range/-Length added to headers; None once a 416 went out."""
        if wanted == "unsatisfiable":
            self._send_headers(416, {**headers, "Content-Range": "bytes */%d" % size, "Content-Length": 0})
            return None
        if wanted is None:
            status, start, end = 200, 0, size - 1
        else:
            status, (start, end) = 206, wanted
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
        length = end - start + 1 if size else 0
        headers["Content-Length"] = length
        return status, start, end, length

    # ---- the store's content checks (verify.py) ----------------------------------------------------
    def trusted(self, snap: Snapshot, path: str, entry: dict[str, Any], key: list[int]) -> bool:
        verdicts = self.config.verdicts
        if verdicts.good(key, entry["sha256"]):
            return True
        known = self.config.store.verified(snap).get(path)
        if isinstance(known, dict) and known.get("key") == key and known.get("sha256") == entry["sha256"]:
            verdicts.record(key, entry["sha256"], True)
            return True
        return False

    def refuse_quarantined(self, key: list[int], label: str) -> None:
        why = self.config.verdicts.bad(key)
        if why is not None:
            # 503 + Retry-After: hub clients retry or move to their next endpoint (upstream), and never keep bad bytes.
            raise HttpError(503, "%s is quarantined on this mirror (%s) until it is repaired (rerun the deployment, or "
                            "autoglm-mirror verify --src); retry later or use another endpoint" % (label, why),
                            "FileQuarantined", {"Retry-After": QUARANTINE_RETRY_AFTER})

    def quarantine(self, key: list[int], label: str, why: str) -> None:
        self.config.verdicts.record(key, "", False, why)
        self.log_message("QUARANTINED %s: %s (dev %d inode %d); refused until the file is replaced", label, why,
                         key[0], key[1])
        self.refuse_quarantined(key, label)

    def verify_whole(self, fd: int, key: list[int], sha256: str, label: str) -> None:
        self.server.unwatch(self.connection)  # the request is in; hashing a large file may outlast its deadline
        verdicts = self.config.verdicts
        with verdicts.lock_for(key):  # concurrent parts of one file wait for one hash, not one each
            if verdicts.good(key, sha256):
                return
            self.refuse_quarantined(key, label)
            got = sha256_fd(fd, key[2])
            if got == sha256:
                verdicts.record(key, sha256, True)
                return
        self.quarantine(key, label, "sha256 %s, the index says %s" % (got, sha256))

    def send_body(self, fd: int, offset: int, length: int, path: str, check: tuple | None = None) -> None:
        faults = self.config.faults
        drop = faults.drop_limit(path) if faults.active else -1
        corrupt = faults.corrupt(path) if faults.active else False
        rate = faults.rate_limit if faults.active and faults.matches(path) else 0
        to_send = length if drop < 0 else min(length, drop)
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(self.config.send_timeout)  # TLS bodies are encrypted in user space: no sendfile
        else:
            # sendfile needs a blocking socket; SO_SNDTIMEO still bounds a stalled client.
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", int(self.config.send_timeout), 0))
        try:
            if corrupt:
                first = bytearray(os.pread(fd, 1, offset))
                if check:
                    check[0].update(bytes(first))  # the fault flips the wire, not the file
                first[0] ^= 0xFF
                sock.sendall(first)
                self._sent += 1
                offset, to_send, length = offset + 1, to_send - 1, length - 1
            self._sendfile(sock, fd, offset, to_send, rate, check)
        except BadBytes as err:
            # Everything but the last piece went out: the client sees a short body, never a whole bad file.
            self.close_connection = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(HttpError):
                self.quarantine(check[3], check[4], str(err))
            return
        finally:
            sock.settimeout(self.timeout)
        if to_send < length:
            self.log_message("dropping connection after %d body bytes (fault control --drop-after)", self._sent)
            self.close_connection = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _sendfile(self, sock: socket.socket, fd: int, offset: int, count: int, rate: int,
                  check: tuple | None = None) -> None:
        tls = isinstance(sock, ssl.SSLSocket)
        chunk = (VERIFY_CHUNK if tls or check else SEND_CHUNK) if not rate else max(1024, rate // 20)
        started = time.monotonic()
        sent_here = 0
        while count > 0:
            try:
                if tls or check:
                    data = os.pread(fd, min(chunk, count), offset)
                    if check:
                        digest, expected, size, _key, _label = check
                        digest.update(data)
                        if offset + len(data) == size:
                            got = digest.hexdigest()
                            if got != expected:
                                raise BadBytes("sha256 %s, the index says %s" % (got, expected))
                            self.config.verdicts.record(check[3], expected, True)
                    if data:
                        sock.sendall(data)
                    n = len(data)
                else:
                    n = os.sendfile(sock.fileno(), fd, offset, min(chunk, count))
            except BlockingIOError:
                raise ConnectionResetError("send timed out") from None
            if n == 0:
                raise ConnectionResetError("file shrank while being sent")
            offset += n
            count -= n
            sent_here += n
            self._sent += n
            if rate:
                ahead = sent_here / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


class MirrorServer(ThreadingHTTPServer):
    """One thread per connection, at most config.max_connections; deadlines enforced from the accept loop."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    config: Config

    def server_activate(self) -> None:
        super().server_activate()
        self._deadlines: dict[Any, float] = {}
        self._deadline_lock = threading.Lock()
        self._active = 0

    def watch(self, conn: Any, seconds: float) -> None:
        with self._deadline_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def unwatch(self, conn: Any) -> None:
        with self._deadline_lock:
            self._deadlines.pop(conn, None)

    def service_actions(self) -> None:
        """Called by serve_forever every poll interval: cut off connections past their deadline (slow clients)."""
        now = time.monotonic()
        with self._deadline_lock:
            late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
            for conn in late:
                del self._deadlines[conn]
        for conn in late:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns and the thread ends

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._deadline_lock:
            full = self._active >= self.config.max_connections
            if not full:
                self._active += 1
        if full:
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._deadline_lock:
            self._active -= 1

    def _refuse_busy(self, request: Any) -> None:
        """Over the connection cap: a short 503 from the accept loop, never blocking it, then close."""
        body = b'{"error": "too many connections"}'
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                "Retry-After: 1\r\nX-Error-Message: too many connections\r\nConnection: close\r\n\r\n" % len(body))
        with contextlib.suppress(OSError):
            if not isinstance(request, ssl.SSLSocket):  # no handshake yet on a TLS one: just close it
                request.setblocking(False)
                request.send(head.encode() + body)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, (OSError, ValueError)):  # a client that reset, timed out or failed the TLS handshake
            return
        super().handle_error(request, client_address)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context from PEM files, TLS 1.2 at least; ssl.SSLError or OSError when they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def make_server(config: Config, bind: str, port: int, tls: ssl.SSLContext | None = None) -> MirrorServer:
    handler = type("BoundHandler", (Handler,), {"config": config})
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    server_class = type("BoundServer", (MirrorServer,), {"address_family": family, "config": config})
    server = server_class((bind, port), handler)
    if tls is not None:
        # The handshake happens in the connection's thread (Handler.setup), so a slow one cannot stall accept().
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server
