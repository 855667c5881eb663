# SPDX-License-Identifier: Apache-2.0
"""The hubs model_fetch downloads from, one class each: how a repository is listed, how a revision becomes a
commit, where a file's bytes are, and what the hub's error headers mean.

A hub is a subclass of Hub decorated with @register; its `name` is the value of model_fetch's `source` option
(the module's argument spec takes its choices from HUBS). What a hub answers is checked entry by entry with
_hub_listing before anything is fetched. The HTTP itself (retries, ranges, credentials, bounds) is
_http_download's, which knows no hub: a hub is the Dialect the Client asks how errors and sizes read.
Standard library only: this runs on target nodes.

To add a hub: one class here (listing_url(), parse(), file_urls(), and whatever differs from Hub's defaults),
its tests, and its name in model_fetch's DOCUMENTATION (the `source` choices).
"""
from __future__ import annotations

import json
import os
import re
from urllib.parse import quote, urljoin, urlsplit

from ansible_collections.autoglm.deploy.plugins.module_utils import _http_download, _hub_listing, _manifest, _stdlib
from ansible_collections.autoglm.deploy.plugins.module_utils._hub_listing import ListingError, check_entry

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

HUBS: dict = {}  # source name -> Hub subclass, in the order of model_fetch's `source` choices


class HubError(ValueError):
    """Options this hub cannot work with; the message says which and how to fix it."""


def register(cls):
    """Class decorator: make a Hub subclass available as model_fetch's source=<cls.name>."""
    HUBS[cls.name] = cls
    return cls


class Hub(_http_download.Dialect):
    """A hub: a listing API behind each endpoint, and a URL per file."""

    name = ""
    default_endpoints: tuple = ()
    default_revision = "main"
    commit_must_be_hex = False  # whether the commit option must be a 40-hex id
    lists_remotely = True  # False: the listing comes from the module's options, with no request
    token_for_file_urls = False  # the token option may go to absolute file URLs (on their own origin)

    def __init__(self, repo_id: str, dest: str):
        self.repo_id = repo_id or ""
        self.dest = dest

    def check(self, params: dict) -> None:
        """Refuse options this hub cannot work with (HubError)."""
        if not REPO_ID_RE.match(self.repo_id):
            raise HubError("repo_id must be ORG/NAME for source=%s, got %r" % (self.name, params["repo_id"]))

    def listing_revision(self, params: dict, revision: str) -> str:
        """What to ask the listing for: the pinned commit, else the revision (with its default)."""
        return params["commit"] or revision

    def listing(self, client, endpoint: str, rev: str, credential) -> tuple:
        """(commit, {path: {size, sha256, git_sha1}}) of rev from one endpoint: one metadata request."""
        what = "listing %s@%s" % (self.repo_id, rev)
        data, _headers = client.get_json(self.listing_url(endpoint, rev), what, credential=credential)
        self.check_answer(data, what, endpoint)
        return self.parse(data, "%s from %s" % (what, endpoint), rev)

    def listing_url(self, endpoint: str, rev: str) -> str:
        raise NotImplementedError

    def check_answer(self, data, what: str, endpoint: str) -> None:
        """Raise a DownloadError for an answer that is the hub's way of saying no (before it is parsed)."""

    @staticmethod
    def parse(data, where: str, rev: str) -> tuple:
        """(commit, files) of a listing answer, every entry checked with _hub_listing (ListingError)."""
        raise NotImplementedError

    def file_urls(self, endpoints: list, path: str, commit: str) -> list:
        """[(endpoint, URL of path at commit)], in the order the endpoints are tried."""
        raise NotImplementedError

    def not_found(self, exc, rev: str) -> str:
        """What a listing's 404 means, for the error message."""
        if exc.error_code == "RevisionNotFound":
            return "revision %r not found in repository %s (check revision; branch, tag or commit)" % (rev, self.repo_id)
        if exc.error_code == "RepoNotFound":
            return "repository %s not found (check repo_id; a private repository may also need a token)" % self.repo_id
        return "repository %s or revision %r not found (%s)" % (self.repo_id, rev, exc.message)

    def error_detail(self, headers, body: bytes) -> tuple:
        # Hugging Face's error headers; the mirror sends them on its ModelScope API too.
        detail = headers.get("X-Error-Message") or ""
        if not detail and body:
            try:
                data = json.loads(body.decode("utf-8", "replace"))
            except ValueError:
                data = None
            if isinstance(data, dict):
                detail = str(self.error_text(data) or "")
        return headers.get("X-Error-Code"), detail

    @staticmethod
    def error_text(data: dict):
        """The message in a JSON error body."""
        return data.get("error")


@register
class HuggingFace(Hub):
    name = "huggingface"
    title = "a Hugging Face endpoint"
    default_endpoints = ("https://huggingface.co",)
    default_revision = "main"
    commit_must_be_hex = True

    def listing_url(self, endpoint: str, rev: str) -> str:
        return "%s/api/models/%s/revision/%s?blobs=true" % (endpoint, self.repo_id, quote(rev, safe=""))

    def file_urls(self, endpoints: list, path: str, commit: str) -> list:
        # Each segment percent-quoted, '/' kept: the resolve URL carries the repo path as it is.
        return [(e, "%s/%s/resolve/%s/%s" % (e, self.repo_id, commit, quote(path, safe="/"))) for e in endpoints]

    def announced_size(self, headers) -> int | None:
        linked = headers.get("X-Linked-Size")  # the LFS file's size, on the answer that redirects to the CDN
        return int(linked) if linked and linked.isdigit() else super().announced_size(headers)

    @staticmethod
    def parse(data, where: str, rev: str = "") -> tuple:
        """(commit, files) of a revision listing (/api/models/{id}/revision/{rev}?blobs=true)."""
        if not isinstance(data, dict) or not isinstance(data.get("siblings"), list):
            raise ListingError("%s: the answer has no siblings list (is it a Hugging Face endpoint?)" % where)
        commit = _hub_listing.check_commit(data.get("sha"), where)
        files: dict = {}
        for index, sib in enumerate(data["siblings"]):
            at = "%s: siblings[%d]" % (where, index)
            if not isinstance(sib, dict):
                raise ListingError("%s must be an object, got %s" % (at, type(sib).__name__))
            lfs = sib.get("lfs")
            if lfs is not None and not isinstance(lfs, dict):
                raise ListingError("%s: lfs must be an object, got %s" % (at, type(lfs).__name__))
            if lfs and lfs.get("sha256"):
                # An LFS file: blobId is the pointer's id, not the content's, so only sha256 names the bytes.
                path, info = check_entry(sib.get("rfilename"), lfs.get("size", sib.get("size")), lfs["sha256"], None, at)
            else:
                path, info = check_entry(sib.get("rfilename"), sib.get("size"), None, sib.get("blobId"), at)
            _hub_listing.add_entry(files, path, info, at)
        return commit, files


@register
class ModelScope(Hub):
    name = "modelscope"
    title = "a ModelScope endpoint"
    default_endpoints = ("https://www.modelscope.cn",)
    default_revision = "master"

    def listing_revision(self, params: dict, revision: str) -> str:
        if not params["revision"] and not params["commit"]:
            return ""  # the hub's default branch (master on ModelScope)
        return super().listing_revision(params, revision)

    def listing_url(self, endpoint: str, rev: str) -> str:
        return "%s/api/v1/models/%s/repo/files?Revision=%s&Recursive=True" % (endpoint, self.repo_id, quote(rev, safe=""))

    def check_answer(self, data, what: str, endpoint: str) -> None:
        # ModelScope says no with 200 and {Code, Message} instead of a listing.
        listing = data.get("Data") if isinstance(data, dict) else None
        if not isinstance(listing, dict) or not isinstance(listing.get("Files"), list):
            message = data.get("Message") if isinstance(data, dict) else None
            if isinstance(message, str) and message:
                raise _http_download.DownloadError("%s at %s: %s" % (what, endpoint, message[:300]),
                                                   "not_found" if data.get("Code") == 404 else "http")

    def file_urls(self, endpoints: list, path: str, commit: str) -> list:
        query = "Revision=%s&FilePath=%s" % (quote(commit, safe=""), quote(path, safe=""))
        return [(e, "%s/api/v1/models/%s/repo?%s" % (e, self.repo_id, query)) for e in endpoints]

    @staticmethod
    def error_text(data: dict):
        return data.get("Message") or data.get("error")

    @staticmethod
    def parse(data, where: str, rev: str) -> tuple:
        """(commit, files) of a file listing (/api/v1/models/{id}/repo/files); the commit is the one its files
        name, else rev."""
        listing = data.get("Data") if isinstance(data, dict) else None
        if not isinstance(listing, dict) or not isinstance(listing.get("Files"), list):
            raise ListingError("%s: the answer has no Data.Files list (is it a ModelScope endpoint?)" % where)
        files: dict = {}
        commits = set()
        for index, item in enumerate(listing["Files"]):
            at = "%s: Data.Files[%d]" % (where, index)
            if not isinstance(item, dict):
                raise ListingError("%s must be an object, got %s" % (at, type(item).__name__))
            if not isinstance(item.get("Type"), str):
                raise ListingError("%s: Type must be a string, got %r" % (at, _hub_listing.short(item.get("Type"))))
            if item["Type"] != "blob":
                continue  # folders ("tree")
            path, info = check_entry(item.get("Path"), item.get("Size"), item.get("Sha256"), None, at)
            # A file's Revision is its commit on ModelScope; anything else there (a branch name) names no commit.
            revision = item.get("Revision")
            if isinstance(revision, str) and _manifest.is_hex(revision.lower(), 40):
                commits.add(revision.lower())
            _hub_listing.add_entry(files, path, info, at)
        return (commits.pop() if len(commits) == 1 else rev), files


@register
class UrlList(Hub):
    """Files named in the module's `files` option, each with its sha256: no listing request, and a commit id
    derived from the content (_stdlib.content_commit) unless the commit option gives one."""

    name = "url"
    default_revision = "files"
    lists_remotely = False
    token_for_file_urls = True

    def __init__(self, repo_id: str, dest: str):
        super().__init__(repo_id or "url/" + os.path.basename(dest.rstrip("/")), dest)
        self.urls: dict = {}

    def check(self, params: dict) -> None:
        if not params["files"]:
            raise HubError("source=url needs files: a list of {path, sha256[, url, size]}")

    def local_listing(self, params: dict, endpoints: list) -> tuple:
        files, urls = {}, {}
        for index, item in enumerate(params["files"]):
            path, sha = item.get("path"), str(item.get("sha256") or "").lower()
            if not path or not _manifest.is_hex(sha, 64):
                raise HubError("files[%d] needs path and a 64-hex sha256, got %r"
                               % (index, {k: item.get(k) for k in ("path", "sha256")}))
            size = item.get("size")
            if isinstance(size, str) and size.strip().isdigit():
                size = int(size)  # from a template, numbers arrive as strings
            try:
                path, info = check_entry(path, size, sha, None, "files[%d]" % index)
            except ListingError as exc:
                raise HubError(str(exc)) from None
            if path in files:
                raise HubError("files[%d]: path %r is listed twice" % (index, path))
            if _manifest.is_state_path(path):
                raise HubError("files[%d]: path %r is inside %s/, which holds model_fetch's state"
                               % (index, path, _manifest.STATE_DIR))
            files[path] = info
            urls[path] = item.get("url") or path
        if not endpoints and any(not urlsplit(u).scheme for u in urls.values()):
            raise HubError("source=url: relative file URLs need endpoints to resolve against")
        self.urls = urls
        commit = params["commit"] or _stdlib.content_commit((p, f["sha256"]) for p, f in files.items())
        return commit, files

    def file_urls(self, endpoints: list, path: str, commit: str) -> list:
        target = self.urls[path]
        parts = urlsplit(target)
        if parts.scheme:
            return [("%s://%s" % (parts.scheme, parts.netloc.rsplit("@", 1)[-1]), target)]
        return [(e, urljoin(e + "/", target)) for e in endpoints]

    def error_detail(self, headers, body: bytes) -> tuple:
        return _http_download.Dialect.error_detail(self, headers, body)  # a web server: plain HTTP
