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
  - autoglm.deploy maintainers (!UNKNOWN)
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
    endpoint: {description: 'Base URL that served it (for kept files, the one recorded).', type: str}
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

from ansible_collections.autoglm.deploy.plugins.module_utils import _fetch, _hubs

# The hubs (source) are classes in module_utils/_hubs.py, the snapshot folder's state in _snapshot.py, the run
# in _fetch.py, the HTTP in _http_download.py: this file is the module's documentation and argument spec.


ARGUMENT_SPEC = dict(
    dest=dict(type="path", required=True),
    source=dict(type="str", default="huggingface", choices=list(_hubs.HUBS)),
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
)


def main():
    _fetch.run_module(_fetch.FetchModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
