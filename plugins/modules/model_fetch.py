#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_fetch
short_description: Download a model snapshot - pinned, resumable, multi-connection, verified - from Hugging Face, ModelScope or URLs
version_added: "0.1.0"
description:
  - Resolves O(revision) (branch, tag or commit) to a commit with one metadata request, then downloads the
    snapshot's files into O(dest) laid out exactly as in the repository, and writes the manifest
    C(<dest>/.autoglm/manifest.json) that M(autoglm.deploy.model_verify) checks against (source, repo id,
    commit, and per file size, sha256, git blob sha1 where known, the endpoint that served it, time fetched).
  - Tries the O(endpoints) in order for every request (for example in-cluster mirror, regional mirror, upstream)
    and reports which endpoint served each file.
  - Large files are fetched over O(connections) parallel ranged connections into a part file with a persisted
    record of finished ranges, both under C(<dest>/.autoglm/parts/) (named by a hash of the path, so no file of
    the snapshot can collide with them), so a killed run, a dropped connection or a rebooted node
    resumes without fetching finished ranges again. sha256 (and the git blob sha1) are computed while the bytes
    stream in and compared before the file is renamed into place; a file whose hash does not match is
    discarded and fetched again, then the next endpoint is tried. A final path never holds unverified bytes,
    and before the manifest is written every promoted file is checked to be the one verified, of the listed size.
  - Nothing a remote side sends is trusted as it comes. Listings are read up to O(max_listing_mb) and every
    entry is checked (a 40-hex commit id; safe relative paths without C(.), C(..), leading C(/), backslashes or
    control characters; sizes integers >= 0; hashes hex of the right length; a hash for every file); a bad
    entry fails naming the entry and the endpoint, and the next endpoint is tried. A file body is never read
    beyond its listed size, or beyond O(unlisted_size_limit_mb) when the listing gives no size.
  - Retries with exponential backoff and jitter, honouring C(Retry-After); copes with servers that answer a
    Range request with the whole body.
  - A rerun against the same commit with complete files is a no-op (C(changed=false)) that sends at most one
    metadata request, and none when O(commit) is given or O(offline=true). Existing files are trusted by size
    against the manifest; M(autoglm.deploy.model_verify) is the full check.
  - A lock file (C(<dest>/.autoglm/fetch.lock), C(flock)) stops two runs writing the same destination.
  - Writes progress (bytes done/total, rate, ETA) to O(status_file), so a long run under C(async) can be watched.
options:
  dest:
    description: Directory the snapshot's files are written to (created if missing).
    type: path
    required: true
  source:
    description:
      - C(huggingface) and C(modelscope) list the files through the hub API; C(url) downloads the O(files) given.
    type: str
    default: huggingface
    choices: [huggingface, modelscope, url]
  repo_id:
    description:
      - Repository id, C(ORG/NAME). Required for C(huggingface) and C(modelscope); a label for C(url).
      - The organisation often differs per hub (C(zai-org/AutoGLM-Phone-9B) on Hugging Face,
        C(ZhipuAI/AutoGLM-Phone-9B) on ModelScope).
    type: str
  revision:
    description:
      - Branch, tag or commit to fetch. Defaults to C(main) on Hugging Face and C(master) on ModelScope.
      - Recorded as asked; the commit it resolves to is recorded too and returned as RV(commit).
    type: str
  commit:
    description:
      - The commit O(revision) is expected to resolve to (as returned by an earlier run or O(resolve_only)).
      - When the destination already holds this commit completely with the same patterns, the run sends no
        request at all. Files are listed by this commit, so the download is pinned even if the branch moves.
    type: str
  endpoints:
    description:
      - Endpoints tried in order for every request, for example the fleet's mirror then the public hub.
      - Each item is a base URL (then O(token) is its credential), or a dict with C(url) (required), C(token)
        (this endpoint's own bearer token; empty for none) and C(allow_insecure_token) (default C(false)).
        Each endpoint gets only its own token, so the hub's token never reaches the mirror and the other way
        round.
      - A token is sent only over https with a verified certificate (see O(ca_bundle)), and never over plain
        http unless C(allow_insecure_token=true) for that endpoint (an isolated lab only, since anyone on the path
        reads it). A dict endpoint with a token over http without it is refused.
      - On a redirect the token is dropped unless scheme, host and port are all unchanged (so never on a
        downgrade to http, nor to a CDN on another host).
      - Default for C(huggingface) is C(https://huggingface.co), for C(modelscope) C(https://www.modelscope.cn).
      - For C(url), relative file URLs are resolved against each endpoint in turn.
    type: list
    elements: raw
    default: []
  files:
    description:
      - For O(source=url), the files to download. Each item has C(path) (relative destination path), C(sha256)
        (required), and optionally C(url) (absolute, or relative to each endpoint; default the path) and C(size).
      - Paths follow the same rules as a hub listing's (relative, no C(.), C(..), backslashes or control
        characters). Without C(size), the server's announced size is used, up to O(unlisted_size_limit_mb).
    type: list
    elements: dict
    default: []
  allow_patterns:
    description:
      - Only files whose repo path matches one of these shell patterns are fetched (huggingface_hub semantics,
        C(fnmatch) on the path; a pattern ending in C(/) means everything in that folder).
    type: list
    elements: str
    default: []
  ignore_patterns:
    description: Files matching any of these patterns are skipped (same semantics as O(allow_patterns)).
    type: list
    elements: str
    default: []
  token:
    description:
      - Bearer token for the O(endpoints) given as plain URLs (and for absolute O(files) URLs), for gated or
        private models. Sent over verified https only; an http endpoint given as a plain URL does not get it (a
        warning says so). To give the mirror and the hub different tokens, use dict items in O(endpoints).
      - Never put in URLs, errors, logs, the status file or the manifest.
    type: str
  offline:
    description:
      - Send no request. Succeeds without change when O(dest) already holds the recorded snapshot completely;
        fails listing the missing files otherwise.
    type: bool
    default: false
  resolve_only:
    description:
      - Only resolve O(revision) and list the files (one metadata request); write nothing. Returns RV(commit),
        RV(files) and RV(bytes_total), for example to choose a directory per commit and check disk space first.
    type: bool
    default: false
  reuse_from:
    description:
      - Other snapshot folders of the same repository, for example the commit deployed now. A file their
        manifest records with the size and hash this snapshot lists is hard-linked instead of downloaded, so a
        new revision that changes only a config file downloads only that file.
      - Folders that do not exist, have no manifest, or lie on another filesystem are skipped (then the file
        is downloaded). The linked file shares its bytes with the other folder; verify the new snapshot as usual.
    type: list
    elements: path
    default: []
  prune:
    description: Delete files the previous manifest listed that the new snapshot (or patterns) no longer include.
    type: bool
    default: true
  max_parallel_files:
    description: Files downloaded at the same time.
    type: int
    default: 4
  connections:
    description:
      - Parallel ranged connections per large file.
      - Hubs and CDNs cap each connection, so the total rate grows with this number (16 matches C(aria2c -x16)).
    type: int
    default: 16
  chunk_size_mb:
    description:
      - Size of one ranged request, in MiB. Files under two chunks use one connection. A killed run loses at most
        the unrecorded part of one chunk per connection.
    type: int
    default: 16
  retries:
    description: Retries per request (connection errors, timeouts, 408, 429, 5xx) before an endpoint counts as failed.
    type: int
    default: 5
  timeout:
    description: Seconds a connection may stay silent (connect or read) before it counts as failed.
    type: int
    default: 30
  validate_certs:
    description:
      - Verify TLS certificates and host names. Keep it on and give O(ca_bundle) for a private CA.
      - C(false) is refused when any endpoint has a token (a token is never sent to an unverified peer), and no
        token is ever sent over https while it is off.
    type: bool
    default: true
  ca_bundle:
    description:
      - PEM file (or C(c_rehash) directory) of CA certificates trusted for https endpoints I(in addition to) the
        system's, for a mirror whose certificate a private CA issued (the public hub stays trusted). Certificate
        and host name are always verified.
    type: path
    aliases: [ca_path]
  max_listing_mb:
    description:
      - Largest listing (or other metadata answer), in MiB, read from an endpoint; a larger one fails with an
        error naming the endpoint. A listing of 10000 files is about 3 MiB.
    type: int
    default: 16
  unlisted_size_limit_mb:
    description:
      - Most bytes, in MiB, accepted for a file whose listing gives no size (the server's announced size, or the
        stream). Files the listing sizes are never read beyond that size.
    type: int
    default: 1024
  proxy:
    description:
      - Proxy URL (C(http://[user:pass@]host:port)) for every request. Empty string disables proxies; unset uses
        the C(http_proxy)/C(https_proxy)/C(no_proxy) environment.
    type: str
  status_file:
    description: Progress file (JSON); C(<dest>/.autoglm/fetch-status.json) when unset.
    type: path
  disk_headroom_mb:
    description: Free space, in MiB, that must remain on the destination filesystem after the download.
    type: int
    default: 256
  lock_timeout:
    description: Seconds to wait for another run holding the destination's lock before failing.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    description: Resolves and lists (one request) and reports the files and bytes it would fetch; writes nothing.
  diff_mode:
    support: full
    description: Lists the files added, changed and removed, with sizes and hashes.
  async:
    support: full
    description: Progress goes to O(status_file) while the job runs.
notes:
  - Only the Python standard library runs on the node.
  - For ModelScope, the commit recorded is the one the file list names for the files; when the listing names
    none, the revision as asked is recorded.
seealso:
  - module: autoglm.deploy.model_verify
author:
  - autoglm.deploy maintainers
"""

EXAMPLES = r"""
- name: Fetch AutoGLM-Phone-9B from the in-cluster mirror, falling back to the public hub
  autoglm.deploy.model_fetch:
    dest: /srv/models/AutoGLM-Phone-9B/snapshot
    repo_id: zai-org/AutoGLM-Phone-9B
    revision: main
    endpoints:
      - {url: "https://mirror.lab:8443", token: "{{ mirror_token | default('') }}"}
      - {url: "https://huggingface.co", token: "{{ hf_token | default('') }}"}
    ca_bundle: /etc/ssl/certs/autoglm-lab-ca.pem
    ignore_patterns: ["*.md", "docs/"]
  async: 14400
  poll: 0
  register: __model_weights_job

- name: Resolve a branch to a commit without downloading
  autoglm.deploy.model_fetch:
    dest: /srv/models/AutoGLM-Phone-9B/incoming
    repo_id: zai-org/AutoGLM-Phone-9B
    revision: main
    resolve_only: true
  register: __model_weights_resolved

- name: Fetch from ModelScope
  autoglm.deploy.model_fetch:
    dest: /srv/models/AutoGLM-Phone-9B-ms
    source: modelscope
    repo_id: ZhipuAI/AutoGLM-Phone-9B

- name: Fetch explicit files from a web server
  autoglm.deploy.model_fetch:
    dest: /srv/models/custom
    source: url
    repo_id: local/custom
    endpoints: [https://files.example.com/models/custom]
    files:
      - {path: config.json, sha256: 0b1c0e2f6f2a6b33f9b8b8c1f7c3e2c1b0a9f8e7d6c5b4a392817161514131211}
"""

RETURN = r"""
commit:
  description: The commit the revision resolved to.
  returned: always
  type: str
revision:
  description: The revision as asked.
  returned: always
  type: str
files:
  description: Every file of the snapshot with what this run did to it.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Path relative to O(dest)., type: str}
    size: {description: Size in bytes., type: int}
    action:
      description: >-
        kept (already complete), fetched, adopted (on disk with the right hash), linked (from O(reuse_from)),
        or in check mode fetch / link.
      type: str
    endpoint: {description: Base URL that served it (for kept files, the one recorded)., type: str}
fetched:
  description: Paths downloaded by this run (in check mode, that would be).
  returned: always
  type: list
  elements: str
removed:
  description: Paths of the previous manifest no longer in the snapshot (deleted when O(prune=true)).
  returned: always
  type: list
  elements: str
bytes_total:
  description: Size of the snapshot (selected files).
  returned: always
  type: int
bytes_to_fetch:
  description: Bytes of the files that had to be downloaded.
  returned: always
  type: int
bytes_fetched:
  description: Bytes received over the network, every retry included.
  returned: always
  type: int
bytes_linked:
  description: Bytes of the files hard-linked from O(reuse_from) instead of downloaded.
  returned: always
  type: int
bytes_resumed:
  description: Bytes found already downloaded in part files (C(.autoglm/parts/)) of an earlier run.
  returned: always
  type: int
endpoints:
  description: Per endpoint, the files and bytes it served.
  returned: always
  type: list
  elements: dict
metadata_requests:
  description: Metadata (listing) requests sent, 0 or 1 unless an endpoint failed over.
  returned: always
  type: int
manifest:
  description: Path of the manifest.
  returned: always
  type: str
status_file:
  description: Path of the progress file.
  returned: always
  type: str
elapsed_s:
  description: Seconds the run took.
  returned: always
  type: float
"""

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urljoin, urlsplit

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _hashing, _http_download, _hub_listing, _manifest

DEFAULT_ENDPOINTS = {"huggingface": ["https://huggingface.co"], "modelscope": ["https://www.modelscope.cn"], "url": []}
DEFAULT_REVISION = {"huggingface": "main", "modelscope": "master", "url": "files"}
STATE_NAME = "fetch.json"
LOCK_NAME = "fetch.lock"
STATUS_NAME = "fetch-status.json"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
PARTS_NAME = "parts"
ENDPOINT_KEYS = ("url", "token", "allow_insecure_token")


class FetchError(Exception):
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


def endpoint_tokens(endpoints) -> list:
    """The tokens nested in dict endpoints: secrets the argument spec cannot mark no_log itself."""
    return [item["token"] for item in endpoints or () if isinstance(item, dict) and isinstance(item.get("token"), str)
            and item["token"]]


class FetchModule(AnsibleModule):
    def _log_invocation(self):
        # Before the invocation is logged (syslog/journal): tokens nested in endpoints are secrets too.
        self.no_log_values.update(endpoint_tokens(self.params.get("endpoints")))
        super()._log_invocation()


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


class Fetcher:
    def __init__(self, module: AnsibleModule):
        self.module = module
        p = module.params
        self.params = p
        self.dest = os.path.abspath(p["dest"])
        self.source = p["source"]
        self.repo_id = p["repo_id"] or ""
        self.revision = p["revision"] or DEFAULT_REVISION[self.source]
        self.token = p["token"] or None
        self.endpoints, self.credentials = [], {}  # base URLs in order; base URL -> its Credential or None
        self.endpoint_problems = []
        self.insecure_skipped = []
        for index, item in enumerate(p["endpoints"] or DEFAULT_ENDPOINTS[self.source]):
            self.add_endpoint(index, item)
        self.state_dir = _manifest.state_dir(self.dest)
        self.status_file = p["status_file"] or os.path.join(self.state_dir, STATUS_NAME)
        self.metadata_requests = 0
        self.started = time.monotonic()
        self.settings = _http_download.Settings(
            connections=p["connections"], chunk_size=max(1, p["chunk_size_mb"]) * _http_download.MIB,
            retries=p["retries"], timeout=p["timeout"], validate_certs=p["validate_certs"], ca_bundle=p["ca_bundle"],
            proxy=p["proxy"], max_metadata_bytes=max(1, p["max_listing_mb"]) * _http_download.MIB,
            max_unlisted_size=max(0, p["unlisted_size_limit_mb"]) * _http_download.MIB)
        self.client = _http_download.Client(self.settings)
        self._lock_fd = None

    # ---- endpoints and their credentials -----------------------------------------------------------
    def add_endpoint(self, index: int, item) -> None:
        """One item of endpoints: a base URL (credential: the token option) or {url, token, allow_insecure_token}.
        Problems are collected for check_params(), which reports them all at once."""
        where = "endpoints[%d]" % index
        if isinstance(item, dict):
            unknown = sorted(str(k) for k in item if k not in ENDPOINT_KEYS)
            url, token, insecure = item.get("url"), item.get("token") or None, item.get("allow_insecure_token", False)
            if unknown:
                self.endpoint_problems.append("%s has unknown key(s) %s; known: %s" % (where, ", ".join(unknown),
                                                                                       ", ".join(ENDPOINT_KEYS)))
            if token is not None and not isinstance(token, str):
                self.endpoint_problems.append("%s.token must be a string" % where)
                token = None
            if isinstance(insecure, str) and insecure.lower() in ("true", "yes", "false", "no"):
                insecure = insecure.lower() in ("true", "yes")
            if not isinstance(insecure, bool):
                self.endpoint_problems.append("%s.allow_insecure_token must be true or false, got %r" % (where, insecure))
                insecure = False
            explicit = True
        else:
            url, token, insecure, explicit = item, self.token, False, False
        if not isinstance(url, str) or not url.strip():
            self.endpoint_problems.append("%s needs url, a base URL such as https://mirror:8443, got %r"
                                          % (where, type(url).__name__ if not isinstance(url, str) else url))
            return
        url = url.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.endpoint_problems.append("%s %r is not an http(s) base URL" % (where, _http_download.redact_url(url)))
            return
        if parts.username or parts.password or parts.query:
            self.endpoint_problems.append("%s %s carries credentials or a query; give the token as this endpoint's "
                                          "token instead" % (where, _http_download.redact_url(url)))
            return
        if url in self.credentials:
            self.endpoint_problems.append("%s %s is listed twice" % (where, url))
            return
        credential = None
        if token:
            if parts.scheme == "http" and not insecure:
                if explicit:
                    self.endpoint_problems.append(
                        "%s %s has a token but is plain http, where anyone on the path can read it: use https "
                        "(with ca_bundle for a private CA), or set allow_insecure_token: true for this endpoint "
                        "(an isolated lab only)" % (where, url))
                else:
                    self.insecure_skipped.append(url)
            else:
                credential = _http_download.Credential(token, url, allow_insecure=insecure)
        self.endpoints.append(url)
        self.credentials[url] = credential

    def credential_for(self, endpoint: str):
        """The credential for a request to endpoint: its own, or for an absolute file URL (source=url) that of an
        endpoint on the same origin, else the token option (Credential binds it to that URL's origin)."""
        if endpoint in self.credentials:
            return self.credentials[endpoint]
        origin = _http_download.origin_of(endpoint)
        for url, credential in self.credentials.items():
            if credential is not None and _http_download.origin_of(url) == origin:
                return credential
        if self.token and origin[0] == "https":
            return _http_download.Credential(self.token, endpoint)
        return None

    def part_path(self, rel: str, suffix: str = ".part") -> str:
        """Where the download (or hard-link staging) of rel lives: in our state folder, named by a hash of the
        path, so no listed file (w.bin.part, x.link, ...) can share the name."""
        digest = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:40]
        return os.path.join(self.state_dir, PARTS_NAME, digest + suffix)

    # ---- input checks ----------------------------------------------------------------------------
    def check_params(self) -> None:
        p = self.params
        if self.source in ("huggingface", "modelscope"):
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", self.repo_id):
                raise FetchError("repo_id must be ORG/NAME for source=%s, got %r" % (self.source, p["repo_id"]))
        elif not p["files"]:
            raise FetchError("source=url needs files: a list of {path, sha256[, url, size]}")
        if not self.repo_id:
            self.repo_id = "url/" + os.path.basename(self.dest.rstrip("/"))
        for name in ("max_parallel_files", "connections", "chunk_size_mb", "timeout", "max_listing_mb"):
            if p[name] < 1:
                raise FetchError("%s must be 1 or more, got %d" % (name, p[name]))
        if p["retries"] < 0:
            raise FetchError("retries must be 0 or more, got %d" % p["retries"])
        if p["unlisted_size_limit_mb"] < 0:
            raise FetchError("unlisted_size_limit_mb must be 0 or more, got %d" % p["unlisted_size_limit_mb"])
        if p["commit"] and not COMMIT_RE.match(p["commit"]) and self.source == "huggingface":
            raise FetchError("commit must be a 40-hex commit id, got %r" % p["commit"])
        if self.endpoint_problems:
            raise FetchError("endpoints: " + "; ".join(self.endpoint_problems))
        has_token = any(self.credentials.values()) or (self.token and self.source == "url")
        if has_token and not p["validate_certs"]:
            raise FetchError("validate_certs=false with a token: a token is never sent to an unverified endpoint. "
                             "Keep validate_certs on and give ca_bundle the CA that issued the endpoint's certificate.")
        if p["ca_bundle"] and not os.path.exists(p["ca_bundle"]):
            raise FetchError("ca_bundle %s does not exist on this host: copy the CA certificate (PEM) there first"
                             % p["ca_bundle"])
        for url in self.insecure_skipped:
            self.module.warn("token is not sent to %s: it is plain http (give that endpoint its own token as a dict "
                             "item with allow_insecure_token: true, for an isolated lab only)" % url)
        if self.source != "url" and not self.endpoints:
            raise FetchError("no endpoints to fetch from")

    # ---- listing ---------------------------------------------------------------------------------
    def list_files(self) -> tuple:
        """(commit, {path: {size, sha256, git_sha1}}, endpoint) from the first endpoint that answers."""
        if self.source == "url":
            return self.url_listing()
        rev = self.params["commit"] or self.revision
        if self.source == "modelscope" and not self.params["revision"] and not self.params["commit"]:
            rev = ""  # the hub's default branch (master on ModelScope)
        errors = []
        for endpoint in self.endpoints:
            try:
                self.metadata_requests += 1
                listed = self.hf_listing(endpoint, rev) if self.source == "huggingface" else self.ms_listing(endpoint, rev)
                asked = rev if COMMIT_RE.match(rev or "") else None
                if asked and listed[0] != asked:
                    # A listing for another commit than the pinned one must not be recorded under it.
                    raise _hub_listing.ListingError("listing %s@%s from %s: the answer is for commit %s"
                                                    % (self.repo_id, asked, endpoint, listed[0]))
                return (*listed, endpoint)
            except _hub_listing.ListingError as exc:
                errors.append((endpoint, _http_download.DownloadError(str(exc), "listing")))
            except _http_download.DownloadError as exc:
                errors.append((endpoint, exc))
                if exc.kind in ("disk", "config"):
                    break
        raise self.listing_error(errors, rev or self.revision)

    def listing_error(self, errors: list, rev: str) -> FetchError:
        lines = []
        for endpoint, exc in errors:
            text = exc.message
            if exc.kind == "not_found":
                if exc.error_code == "RevisionNotFound":
                    text = "revision %r not found in repository %s (check revision; branch, tag or commit)" % (rev, self.repo_id)
                elif exc.error_code == "RepoNotFound":
                    text = "repository %s not found (check repo_id; a private repository may also need a token)" % self.repo_id
                else:
                    text = "repository %s or revision %r not found (%s)" % (self.repo_id, rev, exc.message)
            lines.append("%s: %s" % (_manifest.strip_credentials(endpoint), text))
        kinds = {exc.kind for _, exc in errors}
        hint = ""
        if kinds <= {"network"}:
            hint = " None of the endpoints could be reached: check DNS, routes, proxy settings and that the mirror runs."
        elif "listing" in kinds:
            hint = " A listing that names unsafe or malformed entries is refused whole; nothing was written."
        return FetchError("Cannot list %s@%s from any endpoint (%d tried).%s\n%s"
                          % (self.repo_id, rev, len(errors), hint, "\n".join(lines)))

    def hf_listing(self, endpoint: str, rev: str) -> tuple:
        url = "%s/api/models/%s/revision/%s?blobs=true" % (endpoint, self.repo_id, quote(rev, safe=""))
        what = "listing %s@%s" % (self.repo_id, rev)
        data, _headers = self.client.get_json(url, what, credential=self.credential_for(endpoint))
        return _hub_listing.parse_hf(data, "%s from %s" % (what, endpoint))

    def ms_listing(self, endpoint: str, rev: str) -> tuple:
        url = "%s/api/v1/models/%s/repo/files?Revision=%s&Recursive=True" % (endpoint, self.repo_id, quote(rev, safe=""))
        what = "listing %s@%s" % (self.repo_id, rev)
        data, _headers = self.client.get_json(url, what, credential=self.credential_for(endpoint))
        listing = data.get("Data") if isinstance(data, dict) else None
        if not isinstance(listing, dict) or not isinstance(listing.get("Files"), list):
            message = data.get("Message") if isinstance(data, dict) else None
            if isinstance(message, str) and message:
                raise _http_download.DownloadError("%s at %s: %s" % (what, endpoint, message[:300]),
                                                   "not_found" if data.get("Code") == 404 else "http")
        return _hub_listing.parse_ms(data, "%s from %s" % (what, endpoint), rev)

    def url_listing(self) -> tuple:
        files, urls = {}, {}
        for index, item in enumerate(self.params["files"]):
            path, sha = item.get("path"), str(item.get("sha256") or "").lower()
            if not path or not _manifest.is_hex(sha, 64):
                raise FetchError("files[%d] needs path and a 64-hex sha256, got %r" % (index, {k: item.get(k) for k in ("path", "sha256")}))
            size = item.get("size")
            if isinstance(size, str) and size.strip().isdigit():
                size = int(size)  # from a template, numbers arrive as strings
            try:
                path, info = _hub_listing.check_entry(path, size, sha, None, "files[%d]" % index)
            except _hub_listing.ListingError as exc:
                raise FetchError(str(exc)) from None
            if path in files:
                raise FetchError("files[%d]: path %r is listed twice" % (index, path))
            if _manifest.is_state_path(path):
                raise FetchError("files[%d]: path %r is inside %s/, which holds model_fetch's state"
                                 % (index, path, _manifest.STATE_DIR))
            files[path] = info
            urls[path] = item.get("url") or path
        if not self.endpoints and any(not urlsplit(u).scheme for u in urls.values()):
            raise FetchError("source=url: relative file URLs need endpoints to resolve against")
        self.url_map = urls
        digest = hashlib.sha1(json.dumps(sorted((p, f["sha256"]) for p, f in files.items())).encode())
        commit = self.params["commit"] or digest.hexdigest()
        return commit, files, ""

    def file_urls(self, path: str, commit: str) -> list:
        if self.source == "huggingface":
            return [(e, "%s/%s/resolve/%s/%s" % (e, self.repo_id, commit, _http_download.hf_quote(path))) for e in self.endpoints]
        if self.source == "modelscope":
            return [(e, "%s/api/v1/models/%s/repo?Revision=%s&FilePath=%s" % (e, self.repo_id, quote(commit, safe=""),
                                                                               quote(path, safe=""))) for e in self.endpoints]
        target = self.url_map[path]
        if urlsplit(target).scheme:
            parts = urlsplit(target)
            return [("%s://%s" % (parts.scheme, parts.netloc.rsplit("@", 1)[-1]), target)]
        return [(e, urljoin(e + "/", target)) for e in self.endpoints]

    # ---- local state -----------------------------------------------------------------------------
    def load_manifest(self):
        try:
            return _manifest.load(_manifest.manifest_path(self.dest))
        except _manifest.ManifestError:
            return None

    def load_state(self):
        try:
            with open(os.path.join(self.state_dir, STATE_NAME), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def wanted_state(self, commit: str) -> dict:
        return {"source": self.source, "repo_id": self.repo_id, "commit": commit,
                "allow_patterns": list(self.params["allow_patterns"]), "ignore_patterns": list(self.params["ignore_patterns"])}

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

    def safe_path(self, rel: str) -> str:
        _manifest.check_relpath(rel, "repo path")
        full = os.path.join(self.dest, rel)
        parent = os.path.realpath(os.path.dirname(full))
        root = os.path.realpath(self.dest)
        if parent != root and not parent.startswith(root + os.sep):
            raise FetchError("refusing %s: its folder leads outside %s (a symlink?)" % (rel, self.dest))
        return full

    def acquire_lock(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.params["lock_timeout"]
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                    os.close(fd)
                    raise FetchError("another model_fetch (pid %s) is writing %s (lock %s held); wait for it to finish "
                                     "or raise lock_timeout" % (holder, self.dest, path)) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # ---- the run ---------------------------------------------------------------------------------
    def result(self, **values) -> dict:
        base = {"changed": False, "dest": self.dest, "source": self.source, "repo_id": self.repo_id,
                "revision": self.revision, "commit": "", "files": [], "fetched": [], "removed": [], "bytes_total": 0,
                "bytes_to_fetch": 0, "bytes_fetched": 0, "bytes_resumed": 0, "bytes_linked": 0, "endpoints": [],
                "metadata_requests": self.metadata_requests, "manifest": _manifest.manifest_path(self.dest),
                "status_file": self.status_file, "elapsed_s": round(time.monotonic() - self.started, 3)}
        base.update(values)
        return base

    def noop_from_manifest(self, manifest: dict, commit: str) -> dict:
        files = [{"path": e["path"], "size": e["size"], "action": "kept", "endpoint": e["endpoint"]} for e in manifest["files"]]
        return self.result(commit=commit, files=files, bytes_total=sum(e["size"] for e in manifest["files"]))

    def run(self) -> dict:
        self.check_params()
        p = self.params
        manifest = self.load_manifest()
        state = self.load_state()
        pinned = p["commit"] or (self.revision if COMMIT_RE.match(self.revision) else None)
        if p["offline"] or (pinned and not p["resolve_only"]):
            commit = pinned or (state or {}).get("commit")
            if manifest and state and commit and state == self.wanted_state(commit) and manifest["commit"] == commit:
                missing = self.complete_on_disk(manifest)
                if not missing:
                    return self.noop_from_manifest(manifest, commit)
                if p["offline"]:
                    raise FetchError("offline: %d file(s) of %s@%s are missing or incomplete in %s and offline=true "
                                     "forbids downloading them: %s" % (len(missing), self.repo_id, commit, self.dest,
                                                                        ", ".join(missing[:20])), missing=missing)
            elif p["offline"]:
                raise FetchError("offline: %s holds no complete snapshot of %s%s with these patterns (no manifest or "
                                 "another commit); run once online first" % (self.dest, self.repo_id,
                                                                             "@" + commit if commit else ""))
        commit, listing, list_endpoint = self.list_files()
        wanted = {}
        skipped_state = []
        for path, info in sorted(listing.items()):
            if _manifest.is_state_path(path):
                skipped_state.append(path)
                continue
            if selected(path, p["allow_patterns"], p["ignore_patterns"]):
                wanted[path] = info
        if p["resolve_only"]:
            files = [{"path": path, "size": info["size"], "action": "listed", "endpoint": list_endpoint}
                     for path, info in wanted.items()]
            return self.result(commit=commit, files=files, bytes_total=sum(f["size"] or 0 for f in files),
                               endpoints=[{"endpoint": _manifest.strip_credentials(list_endpoint), "files": 0, "bytes": 0}]
                               if list_endpoint else [])
        return self.converge(commit, wanted, manifest, state)

    def plan(self, wanted: dict, manifest) -> tuple:
        old = _manifest.by_path(manifest) if manifest and manifest["repo_id"] == self.repo_id else {}
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

    def reusable(self, fetch: dict) -> dict:
        """{path: (file in another snapshot, its manifest entry)} for files to fetch that reuse_from already holds."""
        found = {}
        here = os.path.realpath(self.dest)
        device = device_of(here)  # hard links stay on one filesystem; files elsewhere are downloaded
        for folder in self.params["reuse_from"]:
            root = os.path.realpath(folder)
            if root == here:
                continue
            try:
                other = _manifest.load(_manifest.manifest_path(root))
            except _manifest.ManifestError:
                continue  # missing or unreadable: nothing to reuse there
            if other["repo_id"] != self.repo_id:
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

    def converge(self, commit: str, wanted: dict, manifest, state) -> dict:
        p = self.params
        keep, adopt, fetch, removed, old = self.plan(wanted, manifest)
        reuse = self.reusable(fetch)
        bytes_total = sum((info["size"] or 0) for info in wanted.values())
        to_fetch = sum((info["size"] or 0) for path, info in fetch.items() if path not in reuse)
        new_state = self.wanted_state(commit)
        changed = bool(fetch or adopt or (removed and p["prune"]) or manifest is None or manifest["commit"] != commit
                       or manifest["revision"] != self.revision or state != new_state)
        diff = self.diff(old, wanted, fetch, removed) if self.module._diff else None
        if self.module.check_mode:
            files = [{"path": path, "size": info["size"], "action": "link" if path in reuse else "fetch" if path in fetch
                      else ("adopted" if path in adopt else "kept"), "endpoint": (keep.get(path) or {}).get("endpoint", "")}
                     for path, info in wanted.items()]
            return self.result(changed=changed, commit=commit, files=files,
                               fetched=sorted(path for path in fetch if path not in reuse), removed=removed,
                               bytes_total=bytes_total, bytes_to_fetch=to_fetch,
                               bytes_linked=sum(reuse[path][1]["size"] for path in reuse), diff=diff)
        self.acquire_lock()
        try:
            linked = self.link(reuse)
            fetch = {path: info for path, info in fetch.items() if path not in linked}
            to_fetch = sum((info["size"] or 0) for info in fetch.values())
            self.check_disk(fetch)
            fetched, endpoint_stats, totals = self.download(commit, fetch, bytes_total - to_fetch, bytes_total)
            self.check_promoted(wanted, fetched)
            now = _manifest.utc_now_iso()
            entries = []
            for path, info in wanted.items():
                if path in keep:
                    entries.append(dict(keep[path], path=path))
                elif path in linked:
                    entries.append({"path": path, "size": linked[path]["size"], "sha256": linked[path]["sha256"],
                                    "git_sha1": info.get("git_sha1") or linked[path].get("git_sha1"),
                                    "endpoint": linked[path]["endpoint"], "fetched_at": now})
                elif path in adopt:
                    entries.append({"path": path, "size": adopt[path]["size"], "sha256": adopt[path]["sha256"],
                                    "git_sha1": info.get("git_sha1"), "endpoint": _manifest.strip_credentials(
                                        (old.get(path) or {}).get("endpoint") or self.file_urls(path, commit)[0][0]),
                                    "fetched_at": now})
                else:
                    got = fetched[path]
                    entries.append({"path": path, "size": got["size"], "sha256": got["sha256"],
                                    "git_sha1": info.get("git_sha1"),
                                    "endpoint": got["endpoint"], "fetched_at": now})
            if p["prune"]:
                for path in removed:
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(self.safe_path(path))
            new_manifest = _manifest.new(self.source, self.repo_id, self.revision, commit, entries)
            if manifest is None or self.manifest_body(manifest) != self.manifest_body(new_manifest):
                _manifest.write(self.dest, new_manifest)
            if state != new_state:
                _manifest.atomic_write_bytes(os.path.join(self.state_dir, STATE_NAME), _manifest.dumps(new_state))
        finally:
            self.release_lock()
        files = []
        for path, info in wanted.items():
            action = ("fetched" if path in fetch else "linked" if path in linked else "adopted" if path in adopt
                      else "kept")
            endpoint = (fetched[path]["endpoint"] if path in fetch else linked[path]["endpoint"] if path in linked
                        else (keep.get(path) or {}).get("endpoint", ""))
            files.append({"path": path, "size": info["size"] if info["size"] is not None else fetched[path]["size"],
                          "action": action, "endpoint": endpoint})
        return self.result(changed=changed, commit=commit, files=files, fetched=sorted(fetch), removed=removed,
                           bytes_total=bytes_total, bytes_to_fetch=to_fetch, bytes_fetched=totals["fetched"],
                           bytes_resumed=totals["resumed"], endpoints=endpoint_stats, diff=diff,
                           bytes_linked=sum(entry["size"] for entry in linked.values()),
                           rate_bytes_per_s=int(totals["fetched"] / max(1e-6, time.monotonic() - self.started)))

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

    @staticmethod
    def manifest_body(manifest: dict) -> dict:
        body = dict(manifest)
        body.pop("fetched_at", None)
        return body

    def diff(self, old: dict, wanted: dict, fetch: dict, removed: list) -> dict:
        def line(path, info):
            return "%s  %s  %s\n" % (path, info.get("size"), info.get("sha256") or info.get("git_sha1") or "")
        before = "".join(line(path, old[path]) for path in sorted(old))
        after = "".join(line(path, wanted[path]) for path in sorted(wanted))
        return {"before": before, "after": after, "before_header": "%s (files before)" % self.dest,
                "after_header": "%s (files after: %d to fetch, %d removed)" % (self.dest, len(fetch), len(removed))}

    def check_disk(self, fetch: dict) -> None:
        needed = 0
        for path, info in fetch.items():
            size = info["size"] or 0
            part = self.part_path(path)
            try:
                if os.stat(part).st_blocks * 512 >= size:
                    continue  # preallocated by the earlier run
            except OSError:
                pass
            needed += size
        if not needed:
            return
        os.makedirs(self.dest, exist_ok=True)
        st = os.statvfs(self.dest)
        free = st.f_bavail * st.f_frsize
        headroom = self.params["disk_headroom_mb"] * _http_download.MIB
        if needed + headroom > free:
            raise FetchError("not enough disk space in %s: %d bytes to download + %d headroom, %d free; free %d bytes "
                             "(or lower disk_headroom_mb). Parts of earlier runs are kept."
                             % (self.dest, needed, headroom, free, needed + headroom - free),
                             bytes_needed=needed + headroom - free)

    def download(self, commit: str, fetch: dict, already: int, total: int) -> tuple:
        p = self.params
        progress = _http_download.Progress(total_bytes=total, files_total=len(fetch), status_file=self.status_file,
                                           extra={"dest": self.dest, "repo_id": self.repo_id, "commit": commit})
        progress.resumed(already)
        progress.maybe_write(force=True)
        results, errors = {}, {}

        def one(path):
            info = fetch[path]
            tried = []
            for endpoint, url in self.file_urls(path, commit):
                job = _http_download.FileDownload(self.client, url, self.safe_path(path), size=info["size"],
                                                  sha256=info["sha256"], git_sha1=info["git_sha1"], progress=progress,
                                                  label=path, part=self.part_path(path),
                                                  credential=self.credential_for(endpoint))
                try:
                    got = job.run()
                except _http_download.DownloadError as exc:
                    tried.append((endpoint, exc))
                    if exc.kind in ("disk", "config"):
                        break
                    continue
                got["endpoint"] = _manifest.strip_credentials(endpoint)
                got["failed_endpoints"] = [_manifest.strip_credentials(e) for e, _ in tried]
                progress.file_done(path)
                return path, got, None
            return path, None, tried

        workers = max(1, min(p["max_parallel_files"], len(fetch) or 1))
        order = sorted(fetch, key=lambda path: -(fetch[path]["size"] or 0))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, got, tried in pool.map(one, order):
                if got is not None:
                    results[path] = got
                else:
                    errors[path] = tried
        totals = {"fetched": progress.fetched_bytes, "resumed": sum(r["resumed_bytes"] for r in results.values())}
        self.client.close()
        if errors:
            progress.maybe_write(force=True, state="failed")
            raise self.download_error(errors, results, totals)
        progress.maybe_write(force=True, state="done")
        stats = {}
        for got in results.values():
            item = stats.setdefault(got["endpoint"], {"endpoint": got["endpoint"], "files": 0, "bytes": 0})
            item["files"] += 1
            item["bytes"] += got["size"]
        return results, sorted(stats.values(), key=lambda s: s["endpoint"]), totals

    def download_error(self, errors: dict, results: dict, totals: dict) -> FetchError:
        lines, needed = [], 0
        for path, tried in sorted(errors.items()):
            for endpoint, exc in tried:
                text = exc.message
                if exc.kind == "not_found":
                    text = "file %s not found in %s@%s (%s)" % (path, self.repo_id, self.params["commit"] or self.revision, exc.message)
                lines.append("%s via %s: %s" % (path, _manifest.strip_credentials(endpoint), text))
                if exc.kind == "disk" and exc.needed_bytes:
                    needed += exc.needed_bytes
        head = "%d of %d file(s) could not be downloaded into %s" % (len(errors), len(errors) + len(results), self.dest)
        if needed:
            head += "; the disk is full: about %d more bytes are needed (parts are kept: free space and rerun to resume)" % needed
        return FetchError(head + ".\n" + "\n".join(lines), failed=sorted(errors), bytes_fetched=totals["fetched"],
                          bytes_needed=needed or None)


def main():
    module = FetchModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            source=dict(type="str", default="huggingface", choices=["huggingface", "modelscope", "url"]),
            repo_id=dict(type="str"),
            revision=dict(type="str"),
            commit=dict(type="str"),
            endpoints=dict(type="list", elements="raw", default=[]),
            files=dict(type="list", elements="dict", default=[]),
            allow_patterns=dict(type="list", elements="str", default=[]),
            ignore_patterns=dict(type="list", elements="str", default=[]),
            token=dict(type="str", no_log=True),
            offline=dict(type="bool", default=False),
            resolve_only=dict(type="bool", default=False),
            reuse_from=dict(type="list", elements="path", default=[]),
            prune=dict(type="bool", default=True),
            max_parallel_files=dict(type="int", default=4),
            connections=dict(type="int", default=16),
            chunk_size_mb=dict(type="int", default=16),
            retries=dict(type="int", default=5),
            timeout=dict(type="int", default=30),
            validate_certs=dict(type="bool", default=True),
            ca_bundle=dict(type="path", aliases=["ca_path"]),
            max_listing_mb=dict(type="int", default=16),
            unlisted_size_limit_mb=dict(type="int", default=1024),
            proxy=dict(type="str"),
            status_file=dict(type="path"),
            disk_headroom_mb=dict(type="int", default=256),
            lock_timeout=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    secrets = [t for t in [module.params["token"], *endpoint_tokens(module.params["endpoints"])] if t]
    module.no_log_values.update(secrets)

    def scrub(value):
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "********")
        return value

    fetcher = Fetcher(module)
    try:
        result = fetcher.run()
    except FetchError as exc:
        extra = {k: v for k, v in exc.extra.items() if v is not None}
        module.fail_json(msg=scrub(str(exc)), **fetcher.result(**extra))
    except (_manifest.ManifestError, _http_download.DownloadError, ValueError) as exc:
        module.fail_json(msg=scrub(str(exc)), **fetcher.result())
    except OSError as exc:
        module.fail_json(msg=scrub("model_fetch failed on %s: %s" % (getattr(exc, "filename", None) or fetcher.dest,
                                                                      exc.strerror or exc)), **fetcher.result())
    diff = result.pop("diff", None)
    if diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
