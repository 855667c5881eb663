# SPDX-License-Identifier: Apache-2.0
"""The HTTP range downloader: the one place in the collection that fetches files over HTTP(S).

Used by model_fetch (on target nodes), the mirror tests and the fetch benchmark. Standard library
only (http.client, ssl, threading): it runs on target nodes.

What one file download does (FileDownload.run):

* The body goes into ``<dest>.part``; ``<dest>.part.ranges`` (JSON) records which byte intervals
  of the part are written. A checkpoint thread fdatasyncs the part and then rewrites the record
  atomically (temp file, fsync, rename) at most every CHECKPOINT_INTERVAL seconds, so the record
  never claims bytes that are not on disk, even after a power cut. A killed process, a dropped
  connection or a rebooted node resumes from the record: only the unrecorded tail of the pieces in
  flight (at most one chunk per connection, usually far less) is fetched again. The record names
  the expected size and hashes; a record for other content is discarded with its part.
* Large files are split in chunks fetched over ``connections`` keep-alive connections with Range
  requests, lowest offset first; small files (< 2 chunks) use one stream.
* Hashing while streaming, with parallel ranges: sha256 (and the git blob sha1) must see the bytes
  in file order, but ranges arrive out of order. FrontierHasher keeps a *frontier*: every byte
  before it is hashed. A piece written exactly at the frontier is hashed straight from the receive
  buffer (no second read); a piece written beyond it is only noted, and once the frontier reaches
  it, it is read back with pread from the page cache (it was written moments ago, so this is a
  memory copy, not disk I/O). Single-stream downloads are therefore hashed with no read-back at
  all, and with N connections the read-back is bounded by the out-of-order window (about N
  chunks), not by the file size. Hashing is serialised by a lock that is only ever *tried*: a
  worker that finds it busy leaves its piece for the holder, who re-checks after releasing, so no
  connection ever waits on another's hashing. On resume the recorded intervals are simply
  "pieces beyond the frontier": they are read back and hashed first.
* The digest is compared before the part is fsynced and renamed over the final path, so a final
  path only ever holds verified bytes. A mismatch discards that file's part (and record) only and
  retries it from zero (``hash_retries`` times) before failing.
* Retries: connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
  full jitter; ``Retry-After`` (seconds or an HTTP date) is honoured. A connection that made
  progress resets its attempt count, so a flaky server still completes.
* A server that answers 200 to a Range request: that file restarts from zero as one stream.
* Sizes: Content-Range and Content-Length must agree with the expected size; the final size is
  checked before the rename.
* Disk full (ENOSPC/EDQUOT, also from the up-front fallocate) stops with the parts kept and the
  number of bytes still needed.
* Credentials are per endpoint (Credential): a bearer token travels in the Authorization header
  only, to the origin (scheme, host, port) it was given for and nowhere else, so a redirect to
  another host, another port or from https to http drops it; it is never sent over plain http
  unless that endpoint allows it explicitly, nor over https without certificate verification.
  It never appears in URLs, errors or the status file.
* Everything a remote side sends is read through one bound (read_bounded): metadata bodies up to
  Settings.max_metadata_bytes, error and redirect bodies up to ERROR_BODY_LIMIT, file bodies never
  beyond the size the listing gave, or Settings.max_unlisted_size when it gave none.
* The part file and its record live where the caller says (``part``): model_fetch keeps them in
  the snapshot's private state folder, so no file of the snapshot can share their names.
"""
from __future__ import annotations

import base64
import bisect
import contextlib
import email.utils
import errno
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

from ansible_collections.autoglm.deploy.plugins.module_utils._hashing import GIT_SHA1, SHA256, IncrementalHasher
from ansible_collections.autoglm.deploy.plugins.module_utils._stdlib import (
    atomic_write,
    fsync_dir,
    json_bytes,
    netloc_without_credentials,
)

MIB = 1 << 20
DEFAULT_CHUNK_SIZE = 16 * MIB
READ_SIZE = 1 * MIB
READ_BACK_SIZE = 8 * MIB
CHECKPOINT_INTERVAL = 0.5
RECORD_FORMAT = 1
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
ERROR_BODY_LIMIT = 64 * 1024  # error and redirect bodies: enough for a message, never a whole file
DEFAULT_METADATA_LIMIT = 16 * MIB
DEFAULT_UNLISTED_SIZE_LIMIT = 1024 * MIB
JSON_DEPTH_LIMIT = 64
_SECRET_QUERY_KEYS = ("token", "sig", "signature", "key", "auth", "secret", "password", "credential")


class DownloadError(Exception):
    """A download failed. `kind`: network, tls, config, http, auth, not_found, hash, size, too_large, listing,
    range, disk, cancelled."""

    def __init__(self, message: str, kind: str = "network", status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, needed_bytes: int | None = None, error_code: str | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.needed_bytes = needed_bytes
        self.error_code = error_code


def origin_of(url: str) -> tuple:
    """(scheme, host, port) of a URL, the port made explicit: what a credential is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


class Credential:
    """A bearer token bound to one endpoint's origin. It is offered only to that exact origin, and over
    plain http only when allow_insecure says so for that endpoint."""

    def __init__(self, token: str, endpoint: str, allow_insecure: bool = False):
        self.token = token
        self.origin = origin_of(endpoint)
        self.allow_insecure = allow_insecure

    def header_for(self, url: str, verified_tls: bool) -> dict:
        scheme, host, port = origin_of(url)
        if (scheme, host, port) != self.origin:
            return {}  # a redirect elsewhere (other host, port or scheme): the token stays behind
        if scheme == "http" and not self.allow_insecure:
            return {}
        if scheme == "https" and not verified_tls:
            return {}  # an unverified peer could be anyone
        return {"Authorization": "Bearer " + self.token}

    def __repr__(self) -> str:  # never the token, even in a traceback
        return "Credential(%s://%s:%d)" % self.origin


def read_bounded(raw, limit: int, what: str) -> bytes:
    """The whole body of a response, refusing (DownloadError kind 'too_large') past `limit` bytes.

    A declared Content-Length over the limit is refused before a byte is read."""
    length = raw.getheader("Content-Length") if hasattr(raw, "getheader") else None
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise DownloadError("%s: the answer is %s bytes, more than the %d allowed" % (what, length.strip(), limit),
                            "too_large")
    chunks, total = [], 0
    while True:
        block = raw.read(min(READ_SIZE, limit + 1 - total))
        if not block:
            return b"".join(chunks)
        chunks.append(block)
        total += len(block)
        if total > limit:
            raise DownloadError("%s: the answer is more than the %d bytes allowed" % (what, limit), "too_large")


def _json_depth(data, limit: int) -> None:
    """Refuse nesting deeper than limit (iteratively: a deep document must not exhaust the stack here)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise ValueError("nested deeper than %d levels" % limit)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def parse_json_bounded(raw: bytes, what: str, where: str, expected: str = ""):
    """Parse a bounded JSON body; every way it can be bad is a DownloadError saying so (and, when the caller
    names what should have answered, asking whether it is that)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        _json_depth(data, JSON_DEPTH_LIMIT)
    except RecursionError:
        raise DownloadError("%s: %s answered with JSON nested too deeply" % (what, where), "http") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DownloadError("%s: %s did not answer with usable JSON (%s%s)"
                            % (what, where, str(exc)[:100], "; is it %s?" % expected if expected else ""),
                            "http") from None
    return data


class RangeIgnored(Exception):
    """The server answered a Range request with the whole body (200)."""


def redact_url(url: str) -> str:
    """The URL as it may appear in messages: no user:password@, secret-looking query values masked."""
    parts = urlsplit(url)
    host = netloc_without_credentials(parts)
    query = parts.query
    if query:
        pairs = [(k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/")
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  max_retry_after: float = 300.0) -> float:
    """Seconds before retry number `attempt` (0-based): Retry-After when the server gave one, else full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), max_retry_after)
    return random.uniform(0, min(cap, base * (2 ** attempt)))


class Dialect:
    """What a kind of server says beyond plain HTTP: how it names an error, how it announces a size, what it
    is called in a message. This plain one knows nothing beyond HTTP; a hub (_hubs.py) is a subclass."""

    title = ""  # "a Hugging Face endpoint": asked about when an answer is not the JSON expected

    def error_detail(self, headers, body: bytes) -> tuple:
        """(error code or None, detail text or "") of an error answer."""
        return None, ""

    def announced_size(self, headers) -> int | None:
        """The size of the file behind a HEAD answer."""
        length = headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None


PLAIN_HTTP = Dialect()


class Settings:
    """Knobs shared by every request and file download."""

    def __init__(self, connections: int = 8, chunk_size: int = DEFAULT_CHUNK_SIZE, retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 30.0, timeout: float = 30.0, validate_certs: bool = True,
                 ca_bundle: str | None = None, proxy: str | None = None, hash_retries: int = 1,
                 user_agent: str = "autoglm.deploy-model_fetch", max_retry_after: float = 300.0,
                 max_metadata_bytes: int = DEFAULT_METADATA_LIMIT, max_unlisted_size: int = DEFAULT_UNLISTED_SIZE_LIMIT):
        if connections < 1:
            raise ValueError("connections must be 1 or more, got %d" % connections)
        if chunk_size < 64 * 1024:
            raise ValueError("chunk_size must be at least 64 KiB, got %d" % chunk_size)
        self.connections = connections
        self.chunk_size = chunk_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_bundle = ca_bundle
        self.proxy = proxy
        self.max_metadata_bytes = max_metadata_bytes
        self.max_unlisted_size = max_unlisted_size
        self.hash_retries = hash_retries
        self.user_agent = user_agent
        self.max_retry_after = max_retry_after


class Response:
    """An open response with its connection; read the body, then release()."""

    def __init__(self, client: Client, key: tuple, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 url: str):
        self.client, self.key, self.conn, self.raw, self.url = client, key, conn, resp, url
        self.status = resp.status
        self.headers = resp.headers

    def release(self, reusable: bool = True) -> None:
        """Give the connection back (kept alive only when the body was read to its end)."""
        if reusable and self.raw.isclosed() and not self.raw.will_close:
            self.client.put_conn(self.key, self.conn)
        else:
            with contextlib.suppress(Exception):
                self.raw.close()
            with contextlib.suppress(Exception):
                self.conn.close()


class Client:
    """HTTP(S) requests with a keep-alive connection pool per (scheme, host, port), proxies, TLS settings, auth."""

    def __init__(self, settings: Settings | None = None, dialect: Dialect = PLAIN_HTTP):
        self.settings = settings or Settings()
        self.dialect = dialect
        self._pool: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self.requests = 0  # requests sent, for callers that promise a bound on them

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()  # the system's CAs, certificate and host name checked
            if self.settings.ca_bundle:
                # Trusted besides the system's: a private CA for the mirror must not untrust the public hub.
                bundle = self.settings.ca_bundle
                try:
                    if os.path.isdir(bundle):
                        context.load_verify_locations(capath=bundle)
                    else:
                        context.load_verify_locations(cafile=bundle)
                except (OSError, ssl.SSLError) as exc:
                    raise DownloadError("ca_bundle %s cannot be loaded as PEM CA certificates: %s"
                                        % (bundle, getattr(exc, "strerror", None) or exc), "config") from None
            if not self.settings.validate_certs:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl

    def proxy_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        if self.settings.proxy is not None:
            return self.settings.proxy or None
        proxies = getproxies()
        if parts.hostname and proxy_bypass(parts.hostname):
            return None
        return proxies.get(parts.scheme)

    def _new_conn(self, key: tuple) -> http.client.HTTPConnection:
        scheme, host, port, proxy = key
        timeout = self.settings.timeout
        if not proxy:
            if scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=timeout, context=self.ssl_context())
            return http.client.HTTPConnection(host, port, timeout=timeout)
        pparts = urlsplit(proxy)
        pport = pparts.port or (443 if pparts.scheme == "https" else 80)
        headers = {}
        if pparts.username is not None:
            cred = "%s:%s" % (pparts.username, pparts.password or "")
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        if scheme == "https":
            conn = http.client.HTTPSConnection(pparts.hostname, pport, timeout=timeout, context=self.ssl_context())
            conn.set_tunnel(host, port, headers=headers)
        else:
            conn = http.client.HTTPConnection(pparts.hostname, pport, timeout=timeout)
            conn._autoglm_proxy_headers = headers  # sent with each request through a plain HTTP proxy
        return conn

    def get_conn(self, key: tuple) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._pool.get(key)
            if idle:
                return idle.pop()
        return self._new_conn(key)

    def put_conn(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._pool.setdefault(key, []).append(conn)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._pool.values() for c in idle]
            self._pool.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def open(self, method: str, url: str, headers: dict | None = None, body: bytes | None = None,
             credential: Credential | None = None) -> Response:
        """Send one request (following redirects); network failures raise a retryable DownloadError."""
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise DownloadError("unsupported URL scheme in %s (http or https only)" % redact_url(url), "http")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            proxy = self.proxy_for(url)
            key = (parts.scheme, parts.hostname, port, proxy)
            send = {"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity"}
            send.update(headers or {})
            send.pop("Authorization", None)  # only a Credential may add it, and only to its own origin
            if credential is not None:
                send.update(credential.header_for(url, verified_tls=self.settings.validate_certs))
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn = self.get_conn(key)
            if proxy and parts.scheme == "http":
                target = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))
                send.update(getattr(conn, "_autoglm_proxy_headers", {}))
            resp = self._send(conn, method, target, send, body, url, reused_retry=True, key=key)
            self.requests += 1
            if resp.status in REDIRECT_STATUSES and resp.getheader("Location"):
                drained = True
                try:
                    read_bounded(resp, ERROR_BODY_LIMIT, "redirect")
                except Exception:
                    drained = False  # a huge or broken redirect body: drop the connection instead
                Response(self, key, conn, resp, url).release(drained)
                url = urljoin(url, resp.getheader("Location"))
                if resp.status == 303:
                    method, body = "GET", None
                continue
            return Response(self, key, conn, resp, url)
        raise DownloadError("too many redirects fetching %s" % redact_url(url), "http")

    def _send(self, conn, method, target, headers, body, url, reused_retry, key):
        try:
            conn.request(method, target, body=body, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if reused_retry and getattr(conn, "sock", None) is None:
                # An idle keep-alive connection the server had closed: one immediate retry on a fresh one.
                return self._send(self._new_conn(key), method, target, headers, body, url, False, key)
            raise DownloadError("connection to %s failed: %s" % (redact_url(url), exc), "network", retryable=True) from None
        except ssl.SSLCertVerificationError as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise DownloadError("TLS certificate of %s not trusted (%s); set ca_bundle to the PEM file of the CA "
                                "that issued it (the endpoint's certificate must also name the host in the URL)"
                                % (redact_url(url), exc.verify_message), "tls") from None
        except socket.gaierror as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise DownloadError("cannot resolve the host of %s (DNS: %s)" % (redact_url(url), exc.strerror or exc),
                                "network", retryable=True) from None
        except (OSError, http.client.HTTPException) as exc:
            with contextlib.suppress(Exception):
                conn.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
            raise DownloadError("cannot connect to %s: %s" % (redact_url(url), reason), "network", retryable=True) from None

    def check_status(self, resp: Response, what: str, ok=(200,)) -> None:
        """Raise a DownloadError saying what the status means, after draining the error body."""
        if resp.status in ok:
            return
        status = resp.status
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        body = b""
        with contextlib.suppress(Exception):
            body = resp.raw.read(ERROR_BODY_LIMIT)
        resp.release()
        code, detail = self.dialect.error_detail(resp.headers, body)
        where = redact_url(resp.url)
        suffix = (": " + detail[:300]) if detail else ""
        if status == 401:
            raise DownloadError("%s: 401 Unauthorized from %s%s. The repository is private or gated: give this "
                                "endpoint a token that can read it (over https)." % (what, where, suffix), "auth", status)
        if status == 403:
            raise DownloadError("%s: 403 Forbidden from %s%s. The model is gated or the token lacks access: accept the "
                                "licence on the model page with the token's account, or use a token with read access."
                                % (what, where, suffix), "auth", status)
        if status == 404:
            raise DownloadError("%s: 404 Not Found from %s%s" % (what, where, suffix), "not_found", status,
                                error_code=code)
        retryable = status in RETRY_STATUSES
        raise DownloadError("%s: HTTP %d from %s%s" % (what, status, where, suffix), "http", status,
                            retryable=retryable, retry_after=retry_after)

    def back_off_or_raise(self, exc: DownloadError, attempt: int) -> None:
        """Sleep before retry number attempt+1 (backoff with jitter, Retry-After honoured), or re-raise exc."""
        if not exc.retryable or attempt >= self.settings.retries:
            if exc.retryable:
                exc.message = "%s (gave up after %d attempts)" % (exc.message, attempt + 1)
                exc.args = (exc.message,)
            raise exc
        time.sleep(backoff_delay(attempt, self.settings.backoff, self.settings.max_backoff, exc.retry_after,
                                 self.settings.max_retry_after))

    def retrying(self, action, what: str):
        """Run action() until it succeeds, retrying retryable DownloadErrors with backoff."""
        attempt = 0
        while True:
            try:
                return action()
            except DownloadError as exc:
                self.back_off_or_raise(exc, attempt)
                attempt += 1

    def get_json(self, url: str, what: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
                 credential: Credential | None = None):
        """(parsed JSON, response headers) of a metadata request, with retries; the body is bounded by
        Settings.max_metadata_bytes."""
        def once():
            resp = self.open(method, url, headers=dict({"Accept": "application/json"}, **(headers or {})), body=body,
                             credential=credential)
            self.check_status(resp, what)
            try:
                raw = read_bounded(resp.raw, self.settings.max_metadata_bytes, what)
            except DownloadError as exc:
                resp.release(False)
                if exc.kind == "too_large":
                    exc.message += (" from %s (a listing that large is refused; raise max_listing_mb if the repository "
                                    "really has that many files)" % redact_url(url))
                    exc.args = (exc.message,)
                raise
            except (OSError, http.client.HTTPException) as exc:
                resp.release(False)
                raise DownloadError("%s: reading the answer from %s failed: %s" % (what, redact_url(url), exc),
                                    "network", retryable=True) from None
            resp.release()
            return parse_json_bounded(raw, what, redact_url(url), self.dialect.title), resp.headers
        return self.retrying(once, what)

    def head_size(self, url: str, what: str, credential: Credential | None = None) -> int | None:
        def once():
            resp = self.open("HEAD", url, credential=credential)
            self.check_status(resp, what)
            resp.release(False)
            return self.dialect.announced_size(resp.headers)
        return self.retrying(once, what)


class Intervals:
    """Sorted, merged half-open byte intervals [a, b); thread-safe."""

    def __init__(self, items=()):
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._lock = threading.Lock()
        for a, b in items:
            self.add(a, b)

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        with self._lock:
            i = bisect.bisect_left(self._ends, a)
            j = bisect.bisect_right(self._starts, b)
            if i < j:
                a = min(a, self._starts[i])
                b = max(b, self._ends[j - 1])
            self._starts[i:j] = [a]
            self._ends[i:j] = [b]

    def items(self) -> list[list[int]]:
        with self._lock:
            return [[a, b] for a, b in zip(self._starts, self._ends)]

    def total(self) -> int:
        with self._lock:
            return sum(b - a for a, b in zip(self._starts, self._ends))

    def missing(self, size: int) -> list[tuple[int, int]]:
        out, pos = [], 0
        for a, b in self.items():
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < size:
            out.append((pos, size))
        return out


class FrontierHasher:
    """Hash a file whose pieces are written out of order, in file order (see the module docstring)."""

    def __init__(self, fd: int, size: int, algorithms, done=()):
        self._fd = fd
        self._buffer = bytearray(READ_BACK_SIZE)
        self._hasher = IncrementalHasher(algorithms, size=size)
        self.frontier = 0
        self.read_back = 0
        self._pending: dict[int, int] = {}
        self._meta = threading.Lock()
        self._hash_lock = threading.Lock()
        for a, b in done:
            self._pending[a] = b - a

    def written(self, offset: int, data) -> None:
        """Note that `data` now lies at `offset` in the file (call after the write succeeded)."""
        if self._hash_lock.acquire(blocking=False):
            try:
                self._drain_locked()  # bring the frontier up to this piece if earlier ones are waiting
                with self._meta:
                    inline = offset == self.frontier
                    if not inline:
                        self._pending[offset] = len(data)
                if inline:
                    self._hasher.update(data)
                    with self._meta:
                        self.frontier += len(data)
                self._drain_locked()
            finally:
                self._hash_lock.release()
        else:
            with self._meta:
                self._pending[offset] = len(data)
        self._kick()

    def _kick(self) -> None:
        # The lock holder may have finished draining just before our piece was noted: re-check after release.
        while True:
            with self._meta:
                if self.frontier not in self._pending:
                    return
            if not self._hash_lock.acquire(blocking=False):
                return  # the holder re-checks after it releases
            try:
                self._drain_locked()
            finally:
                self._hash_lock.release()

    def _drain_locked(self) -> None:
        while True:
            with self._meta:
                length = self._pending.pop(self.frontier, None)
                offset = self.frontier
            if length is None:
                return
            end = offset + length
            while offset < end:
                # One reused buffer: a fresh 8 MiB bytes object per read costs more than the read itself.
                view = memoryview(self._buffer)[:min(READ_BACK_SIZE, end - offset)]
                count = os.preadv(self._fd, [view], offset)
                if not count:
                    raise DownloadError("the part file shrank while it was being hashed", "size")
                self._hasher.update(view[:count])
                offset += count
                self.read_back += count
            with self._meta:
                self.frontier = end

    def finish(self) -> dict:
        with self._hash_lock:
            self._drain_locked()
        return self._hasher.hexdigests()


class Progress:
    """Bytes done/total over every file of a run, rate and ETA, written to a status file for async use."""

    def __init__(self, total_bytes: int = 0, files_total: int = 0, status_file: str | None = None,
                 interval: float = 1.0, extra: dict | None = None):
        self.total_bytes = total_bytes
        self.files_total = files_total
        self.done_bytes = 0
        self.fetched_bytes = 0
        self.files_done = 0
        self.status_file = status_file
        self.interval = interval
        self.extra = dict(extra or {})
        self.started = time.monotonic()
        self._samples: list[tuple[float, int]] = [(self.started, 0)]
        self._lock = threading.Lock()
        self._last_write = 0.0
        self.active: dict[str, int] = {}

    def add(self, fetched: int, label: str | None = None) -> None:
        with self._lock:
            self.done_bytes += fetched
            self.fetched_bytes += fetched
            if label:
                self.active[label] = self.active.get(label, 0) + fetched
        self.maybe_write()

    def resumed(self, count: int) -> None:
        with self._lock:
            self.done_bytes += count

    def file_done(self, label: str | None = None) -> None:
        with self._lock:
            self.files_done += 1
            self.active.pop(label, None)
        self.maybe_write(force=True)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, self.fetched_bytes))
            while len(self._samples) > 2 and now - self._samples[1][0] > 10:
                self._samples.pop(0)
            t0, b0 = self._samples[0]
            return (self.fetched_bytes - b0) / (now - t0) if now > t0 else 0.0

    def snapshot(self, state: str = "running") -> dict:
        rate = self.rate()
        left = max(0, self.total_bytes - self.done_bytes)
        return dict(self.extra, state=state, pid=os.getpid(), bytes_done=self.done_bytes, bytes_total=self.total_bytes,
                    bytes_fetched=self.fetched_bytes, files_done=self.files_done, files_total=self.files_total,
                    rate_bytes_per_s=int(rate), eta_s=(round(left / rate, 1) if rate > 0 else None),
                    elapsed_s=round(time.monotonic() - self.started, 1),
                    updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def maybe_write(self, force: bool = False, state: str = "running") -> None:
        if not self.status_file:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return
        self._last_write = now
        with contextlib.suppress(OSError):
            write_json_atomic(self.status_file, self.snapshot(state), durable=False)


def write_json_atomic(path: str, data, durable: bool = True) -> None:
    atomic_write(path, json_bytes(data, indent=None), durable=durable)


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class FileDownload:
    """One file: resumable, ranged, hashed while streaming, renamed into place only when it matches."""

    def __init__(self, client: Client, url: str, dest: str, size: int | None = None, sha256: str | None = None,
                 git_sha1: str | None = None, progress: Progress | None = None, label: str | None = None,
                 headers: dict | None = None, part: str | None = None, credential: Credential | None = None):
        self.client = client
        self.settings = client.settings
        self.url = url
        self.dest = dest
        self.size = size
        self.sha256 = sha256
        self.git_sha1 = git_sha1
        self.progress = progress
        self.label = label or os.path.basename(dest)
        self.headers = headers or {}
        self.credential = credential
        # model_fetch puts the part where no listed file can be (its state folder); others default next to dest.
        self.part = part or dest + ".part"
        self.record_path = self.part + ".ranges"
        self.fetched = 0  # body bytes received over the network (this run, every attempt)
        self.resumed = 0  # bytes found already written by an earlier run
        self.read_back = 0
        self.restarts = 0
        self.single_stream = False
        self._written_id = None  # (st_dev, st_ino) of the part the verified bytes were written to
        self._stop = threading.Event()

    # ---- the record of written ranges ------------------------------------------------------------
    def identity(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "git_sha1": self.git_sha1}

    def load_record(self) -> Intervals:
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                data = json.load(handle)
            part_size = os.path.getsize(self.part)
        except (OSError, ValueError):
            return Intervals()
        if (not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("identity") != self.identity()
                or part_size != self.size or not self.has_expected_hash()):
            return Intervals()
        done = Intervals()
        for item in data.get("done", []):
            if (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)
                    and 0 <= item[0] < item[1] <= self.size):
                done.add(item[0], item[1])
        return done

    def has_expected_hash(self) -> bool:
        return bool(self.sha256 or self.git_sha1)

    def save_record(self, fd: int, done: Intervals) -> None:
        """fdatasync the part, then record what is written: the record never runs ahead of the disk."""
        items = done.items()
        os.fdatasync(fd)
        write_json_atomic(self.record_path, {"format": RECORD_FORMAT, "identity": self.identity(), "done": items})

    def discard(self) -> None:
        for path in (self.part, self.record_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # ---- the run -------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Download (or resume) the file; return size, hashes, bytes fetched/resumed. Raises DownloadError."""
        if self.size is None:
            if not self.has_expected_hash():
                raise DownloadError("%s: neither a size nor a hash to check it by; refusing to download it unverified"
                                    % self.label, "size")
            self.size = self.client.head_size(self.url, "size of %s" % self.label, credential=self.credential)
            limit = self.settings.max_unlisted_size
            if self.size is None:
                self.single_stream = True
            elif self.size > limit:
                raise DownloadError("%s: the listing gives no size and %s announces %d bytes, more than the %d allowed "
                                    "for a file of unlisted size (raise unlisted_size_limit_mb, or list its size)"
                                    % (self.label, redact_url(self.url), self.size, limit), "size")
        os.makedirs(os.path.dirname(os.path.abspath(self.dest)), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(self.part)), exist_ok=True)
        attempts = self.settings.hash_retries + 1
        for attempt in range(attempts):
            digests = self._attempt_following_range_support()
            problem = self._compare(digests)
            if problem is None:
                promoted = self._commit()
                return {"size": self.size, SHA256: digests.get(SHA256), GIT_SHA1: digests.get(GIT_SHA1),
                        "fetched_bytes": self.fetched, "resumed_bytes": self.resumed, "read_back_bytes": self.read_back,
                        "restarts": self.restarts, "file_id": promoted}
            self.discard()
            self.restarts += 1
            if attempt + 1 >= attempts:
                raise DownloadError("%s from %s: %s (tried %d time(s); the part was discarded)"
                                    % (self.label, redact_url(self.url), problem, attempts), "hash")
        raise AssertionError("unreachable")

    def _attempt_following_range_support(self) -> dict:
        range_restarts = 0
        while True:
            try:
                return self._attempt()
            except RangeIgnored:
                # The server sends whole bodies to Range requests: start over from zero, as one stream
                # (a plain GET). It can only recur when that stream breaks and its resume is refused too.
                self.discard()
                self.single_stream = True
                self.restarts += 1
                range_restarts += 1
                if range_restarts > self.settings.retries:
                    raise DownloadError("%s from %s: the server ignores Range requests and the download keeps breaking "
                                        "off, so it cannot be resumed (%d restarts from zero)"
                                        % (self.label, redact_url(self.url), range_restarts), "range") from None

    def _compare(self, digests: dict) -> str | None:
        if self.sha256 and digests.get(SHA256) != self.sha256:
            return "sha256 mismatch: expected %s, got %s" % (self.sha256, digests.get(SHA256))
        if self.git_sha1 and digests.get(GIT_SHA1) != self.git_sha1:
            return "git blob sha1 mismatch: expected %s, got %s" % (self.git_sha1, digests.get(GIT_SHA1))
        return None

    def _commit(self) -> tuple:
        """Rename the verified part over dest; returns (st_dev, st_ino) of what was promoted, so the caller
        can check that the final path still holds these very bytes."""
        fd = os.open(self.part, os.O_RDONLY)
        try:
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if self._written_id is not None and (st.st_dev, st.st_ino) != self._written_id:
            raise DownloadError("%s: %s was replaced by another file while it was being written; nothing was promoted"
                                % (self.label, self.part), "size")
        if self.size is not None and st.st_size != self.size:
            self.discard()
            raise DownloadError("%s: size %d on disk, expected %d" % (self.label, st.st_size, self.size), "size")
        os.replace(self.part, self.dest)
        fsync_dir(self.dest)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)
        return st.st_dev, st.st_ino

    def _attempt(self) -> dict:
        # The git blob sha1 only where the hub gave one to compare with: on a multi-GB shard it costs a
        # second full hash pass of CPU for a value nobody reads.
        algorithms = [SHA256] + ([GIT_SHA1] if self.git_sha1 and self.size is not None else [])
        self._stop.clear()
        if self.single_stream and self.size is None:
            return self._unknown_size_stream(algorithms)
        done = self.load_record() if not self.single_stream else Intervals()
        if not done.total():
            self.discard()
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            st = os.fstat(fd)
            self._written_id = (st.st_dev, st.st_ino)
            self._allocate(fd, done)
            self.resumed = done.total()
            if self.progress and self.resumed:
                self.progress.resumed(self.resumed)
            hasher = FrontierHasher(fd, self.size, algorithms, done.items())
            if self.size:
                self._fetch_ranges(fd, done, hasher)
            digests = hasher.finish()
            self.read_back += hasher.read_back
            return digests
        finally:
            os.close(fd)

    def _allocate(self, fd: int, done: Intervals) -> None:
        try:
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            if self.size and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except OSError as exc:
                    if _is_disk_full(exc):
                        raise
                    # EOPNOTSUPP/EINVAL: a filesystem without fallocate; writes will find out.
        except OSError as exc:
            raise self._write_error(exc, done, "the part is kept for resume") from None

    def _write_error(self, exc: OSError, done: Intervals, kept: str) -> DownloadError:
        """What a failed write of the part means: a full disk (with the bytes still needed), or another error."""
        if _is_disk_full(exc):
            needed = self.size - done.total()
            return DownloadError("disk full writing %s: %d more bytes are needed for this file (%s)"
                                 % (self.part, needed, kept), "disk", needed_bytes=needed)
        return DownloadError("cannot write %s: %s" % (self.part, exc.strerror or exc), "disk")

    def _plan(self, done: Intervals) -> list[tuple[int, int]]:
        chunk = self.settings.chunk_size
        out = []
        for a, b in done.missing(self.size):
            while a < b:
                out.append((a, min(b, a + chunk)))
                a += chunk
        return out

    def _fetch_ranges(self, fd: int, done: Intervals, hasher: FrontierHasher) -> None:
        chunks = self._plan(done)
        if not chunks:
            return
        workers = 1 if self.single_stream else max(1, min(self.settings.connections, len(chunks)))
        if workers == 1:
            # One stream: ask for everything that is missing from the first gap on; a plain GET from zero.
            chunks = list(done.missing(self.size))
        queue = list(reversed(chunks))
        queue_lock = threading.Lock()
        errors: list[BaseException] = []
        dirty = threading.Event()
        finished = threading.Event()

        def worker():
            try:
                while not self._stop.is_set():
                    with queue_lock:
                        if not queue:
                            return
                        a, b = queue.pop()
                    self._fetch_chunk(fd, a, b, done, hasher, dirty, whole_ok=(workers == 1))
            except BaseException as exc:  # handed to the caller, which re-raises the first one
                errors.append(exc)
                self._stop.set()

        def checkpointer():
            while not finished.is_set():
                finished.wait(CHECKPOINT_INTERVAL)
                if dirty.is_set():
                    dirty.clear()
                    with contextlib.suppress(OSError):
                        self.save_record(fd, done)

        threads = [threading.Thread(target=worker, name="fetch-%s-%d" % (self.label, i), daemon=True)
                   for i in range(workers)]
        saver = threading.Thread(target=checkpointer, name="checkpoint-%s" % self.label, daemon=True)
        saver.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished.set()
        saver.join()
        if errors:
            first = next((e for e in errors if isinstance(e, RangeIgnored)), errors[0])
            if not isinstance(first, RangeIgnored):
                with contextlib.suppress(OSError):
                    self.save_record(fd, done)  # keep the progress for the next run
            raise first

    def _fetch_chunk(self, fd: int, a: int, b: int, done: Intervals, hasher: FrontierHasher, dirty: threading.Event,
                     whole_ok: bool) -> None:
        attempt = 0
        while a < b:
            if self._stop.is_set():
                raise DownloadError("cancelled", "cancelled")
            try:
                got = self._stream(fd, a, b, done, hasher, dirty, whole_ok)
            except DownloadError as exc:
                got = getattr(exc, "progress", 0)
                a += got
                if got:
                    attempt = 0  # the connection made progress: a flaky server still gets there
                self.client.back_off_or_raise(exc, attempt)
                attempt += 1
                continue
            a += got

    def _stream(self, fd: int, a: int, b: int, done: Intervals, hasher: FrontierHasher, dirty: threading.Event,
                whole_ok: bool) -> int:
        """One request for [a, b); returns the bytes written. On failure the DownloadError carries .progress."""
        headers = dict(self.headers)
        whole = a == 0 and b == self.size
        if not (whole and whole_ok):
            headers["Range"] = "bytes=%d-%d" % (a, b - 1)
        what = "downloading %s" % self.label
        resp = self.client.open("GET", self.url, headers=headers, credential=self.credential)
        if resp.status == 200 and "Range" in headers:
            resp.release(False)
            raise RangeIgnored()
        self.client.check_status(resp, what, ok=(200, 206))
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            expected = "bytes %d-%d/%d" % (a, b - 1, self.size)
            if crange.strip() != expected:
                resp.release(False)
                raise DownloadError("%s: the server sent Content-Range %r for a request of %r (the file changed "
                                    "upstream, or a proxy is rewriting ranges)" % (what, crange, expected), "size")
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != b - a:
            resp.release(False)
            raise DownloadError("%s: the server announced %s bytes where %d were expected (size %d); the file on "
                                "the server is not the one listed" % (what, length, b - a, self.size), "size")
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        pos = a
        try:
            while pos < b:
                if self._stop.is_set():
                    raise DownloadError("cancelled", "cancelled")
                try:
                    n = resp.raw.readinto(view[:min(READ_SIZE, b - pos)])
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError("%s: connection to %s broke after %d bytes: %s"
                                        % (what, redact_url(self.url), pos - a, exc.__class__.__name__), "network",
                                        retryable=True) from None
                if not n:
                    raise DownloadError("%s: the connection closed after %d of %d bytes" % (what, pos - a, b - a),
                                        "network", retryable=True)
                try:
                    written = os.pwrite(fd, view[:n], pos)
                except OSError as exc:
                    raise self._write_error(exc, done, "parts kept for resume") from None
                if written != n:
                    raise DownloadError("short write to %s" % self.part, "disk")
                hasher.written(pos, view[:n])
                done.add(pos, pos + n)
                dirty.set()
                pos += n
                self.fetched += n
                if self.progress:
                    self.progress.add(n, self.label)
            extra = resp.raw.read(1) if resp.raw.length else b""
            if extra:
                raise DownloadError("%s: the server sent more than the %d bytes asked for" % (what, b - a), "size")
        except DownloadError as exc:
            exc.progress = pos - a
            resp.release(False)
            raise
        resp.release(True)
        return pos - a

    def _unknown_size_stream(self, algorithms) -> dict:
        """A server that states no size (no HEAD length): one stream, hashed inline, no resume, and never more
        than Settings.max_unlisted_size bytes written."""
        self.discard()
        limit = self.settings.max_unlisted_size
        resp = self.client.open("GET", self.url, headers=dict(self.headers), credential=self.credential)
        self.client.check_status(resp, "downloading %s" % self.label)
        hasher = IncrementalHasher([a for a in algorithms if a == SHA256])
        try:
            with open(self.part, "wb") as handle:
                st = os.fstat(handle.fileno())
                self._written_id = (st.st_dev, st.st_ino)
                while True:
                    block = resp.raw.read(min(READ_SIZE, limit + 1 - hasher.fed))
                    if not block:
                        break
                    if hasher.fed + len(block) > limit:
                        resp.release(False)
                        self.discard()
                        raise DownloadError("%s: %s sent more than the %d bytes allowed for a file of unlisted size "
                                            "(the part was discarded; raise unlisted_size_limit_mb, or list its size)"
                                            % (self.label, redact_url(self.url), limit), "size")
                    handle.write(block)
                    hasher.update(block)
                    self.fetched += len(block)
                    if self.progress:
                        self.progress.add(len(block), self.label)
        except OSError as exc:
            resp.release(False)
            if _is_disk_full(exc):
                raise DownloadError("disk full writing %s" % self.part, "disk") from None
            raise DownloadError("downloading %s failed: %s" % (self.label, exc), "network", retryable=True) from None
        resp.release()
        self.size = hasher.fed
        return hasher.hexdigests()
