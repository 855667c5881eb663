# SPDX-License-Identifier: Apache-2.0
"""model_fetch's run: endpoints and their credentials, the listing with failover, the plan, the downloads, the
result. The hub protocol is _hubs', the local state _snapshot's, the HTTP _http_download's; this file only
puts them in order. Standard library only (besides AnsibleModule): it runs on target nodes.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _http_download, _hub_listing, _hubs, _manifest
from ansible_collections.autoglm.deploy.plugins.module_utils._snapshot import (
    STATUS_NAME,
    FetchError,
    SnapshotDir,
    selected,
)
from ansible_collections.autoglm.deploy.plugins.module_utils._stdlib import strip_credentials

ENDPOINT_KEYS = ("url", "token", "allow_insecure_token")
MIB = _http_download.MIB


def endpoint_tokens(endpoints) -> list:
    """The tokens nested in dict endpoints: secrets the argument spec cannot mark no_log itself."""
    return [item["token"] for item in endpoints or () if isinstance(item, dict) and isinstance(item.get("token"), str)
            and item["token"]]


class FetchModule(AnsibleModule):
    def _log_invocation(self):
        # Before the invocation is logged (syslog/journal): tokens nested in endpoints are secrets too.
        self.no_log_values.update(endpoint_tokens(self.params.get("endpoints")))
        super()._log_invocation()


class Fetcher:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.params = p
        self.snapshot = SnapshotDir(p["dest"], p["lock_timeout"])
        self.dest = self.snapshot.dest
        self.hub = _hubs.HUBS[p["source"]](p["repo_id"], self.dest)
        self.revision = p["revision"] or self.hub.default_revision
        self.token = p["token"] or None
        self.endpoints, self.credentials = [], {}  # base URLs in order; base URL -> its Credential or None
        self.endpoint_problems = []
        self.insecure_skipped = []
        for index, item in enumerate(p["endpoints"] or self.hub.default_endpoints):
            self.add_endpoint(index, item)
        self.status_file = p["status_file"] or os.path.join(self.snapshot.state_dir, STATUS_NAME)
        self.metadata_requests = 0
        self.started = time.monotonic()
        self.settings = _http_download.Settings(
            connections=p["connections"], chunk_size=max(1, p["chunk_size_mb"]) * MIB,
            retries=p["retries"], timeout=p["timeout"], validate_certs=p["validate_certs"], ca_bundle=p["ca_bundle"],
            proxy=p["proxy"], max_metadata_bytes=max(1, p["max_listing_mb"]) * MIB,
            max_unlisted_size=max(0, p["unlisted_size_limit_mb"]) * MIB)
        self.client = _http_download.Client(self.settings, dialect=self.hub)

    @property
    def repo_id(self) -> str:
        return self.hub.repo_id

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

    # ---- input checks ----------------------------------------------------------------------------
    def check_params(self) -> None:
        p = self.params
        self.hub.check(p)
        for name in ("max_parallel_files", "connections", "chunk_size_mb", "timeout", "max_listing_mb"):
            if p[name] < 1:
                raise FetchError("%s must be 1 or more, got %d" % (name, p[name]))
        if p["retries"] < 0:
            raise FetchError("retries must be 0 or more, got %d" % p["retries"])
        if p["unlisted_size_limit_mb"] < 0:
            raise FetchError("unlisted_size_limit_mb must be 0 or more, got %d" % p["unlisted_size_limit_mb"])
        if p["commit"] and not _hubs.COMMIT_RE.match(p["commit"]) and self.hub.commit_must_be_hex:
            raise FetchError("commit must be a 40-hex commit id, got %r" % p["commit"])
        if self.endpoint_problems:
            raise FetchError("endpoints: " + "; ".join(self.endpoint_problems))
        has_token = any(self.credentials.values()) or (self.token and self.hub.token_for_file_urls)
        if has_token and not p["validate_certs"]:
            raise FetchError("validate_certs=false with a token: a token is never sent to an unverified endpoint. "
                             "Keep validate_certs on and give ca_bundle the CA that issued the endpoint's certificate.")
        if p["ca_bundle"] and not os.path.exists(p["ca_bundle"]):
            raise FetchError("ca_bundle %s does not exist on this host: copy the CA certificate (PEM) there first"
                             % p["ca_bundle"])
        for url in self.insecure_skipped:
            self.module.warn("token is not sent to %s: it is plain http (give that endpoint its own token as a dict "
                             "item with allow_insecure_token: true, for an isolated lab only)" % url)
        if self.hub.lists_remotely and not self.endpoints:
            raise FetchError("no endpoints to fetch from")

    # ---- listing ---------------------------------------------------------------------------------
    def list_files(self) -> tuple:
        """(commit, {path: {size, sha256, git_sha1}}, endpoint) from the first endpoint that answers."""
        if not self.hub.lists_remotely:
            return (*self.hub.local_listing(self.params, self.endpoints), "")
        rev = self.hub.listing_revision(self.params, self.revision)
        errors = []
        for endpoint in self.endpoints:
            try:
                self.metadata_requests += 1
                listed = self.hub.listing(self.client, endpoint, rev, self.credential_for(endpoint))
                asked = rev if _hubs.COMMIT_RE.match(rev or "") else None
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
        lines = ["%s: %s" % (strip_credentials(endpoint), self.hub.not_found(exc, rev) if exc.kind == "not_found"
                             else exc.message) for endpoint, exc in errors]
        kinds = {exc.kind for _endpoint, exc in errors}
        hint = ""
        if kinds <= {"network"}:
            hint = " None of the endpoints could be reached: check DNS, routes, proxy settings and that the mirror runs."
        elif "listing" in kinds:
            hint = " A listing that names unsafe or malformed entries is refused whole; nothing was written."
        return FetchError("Cannot list %s@%s from any endpoint (%d tried).%s\n%s"
                          % (self.repo_id, rev, len(errors), hint, "\n".join(lines)))

    # ---- the run ---------------------------------------------------------------------------------
    def wanted_state(self, commit: str) -> dict:
        return {"source": self.hub.name, "repo_id": self.repo_id, "commit": commit,
                "allow_patterns": list(self.params["allow_patterns"]), "ignore_patterns": list(self.params["ignore_patterns"])}

    def result(self, **values) -> dict:
        base = {"changed": False, "dest": self.dest, "source": self.hub.name, "repo_id": self.repo_id,
                "revision": self.revision, "commit": "", "files": [], "fetched": [], "removed": [], "bytes_total": 0,
                "bytes_to_fetch": 0, "bytes_fetched": 0, "bytes_resumed": 0, "bytes_linked": 0, "endpoints": [],
                "metadata_requests": self.metadata_requests, "manifest": self.snapshot.manifest_path,
                "status_file": self.status_file, "elapsed_s": round(time.monotonic() - self.started, 3)}
        base.update(values)
        return base

    def run(self) -> dict:
        self.check_params()
        p = self.params
        manifest = self.snapshot.load_manifest()
        state = self.snapshot.load_state()
        pinned = p["commit"] or (self.revision if _hubs.COMMIT_RE.match(self.revision) else None)
        if p["offline"] or (pinned and not p["resolve_only"]):
            commit = pinned or (state or {}).get("commit")
            if manifest and state and commit and state == self.wanted_state(commit) and manifest["commit"] == commit:
                missing = self.snapshot.complete_on_disk(manifest)
                if not missing:
                    files = [{"path": e["path"], "size": e["size"], "action": "kept", "endpoint": e["endpoint"]}
                             for e in manifest["files"]]
                    return self.result(commit=commit, files=files, bytes_total=sum(e["size"] for e in manifest["files"]))
                if p["offline"]:
                    raise FetchError("offline: %d file(s) of %s@%s are missing or incomplete in %s and offline=true "
                                     "forbids downloading them: %s"
                                     % (len(missing), self.repo_id, commit, self.dest, ", ".join(missing[:20])),
                                     missing=missing)
            elif p["offline"]:
                raise FetchError("offline: %s holds no complete snapshot of %s%s with these patterns (no manifest or "
                                 "another commit); run once online first" % (self.dest, self.repo_id,
                                                                             "@" + commit if commit else ""))
        commit, listing, list_endpoint = self.list_files()
        wanted = {path: info for path, info in sorted(listing.items())
                  if not _manifest.is_state_path(path) and selected(path, p["allow_patterns"], p["ignore_patterns"])}
        if p["resolve_only"]:
            files = [{"path": path, "size": info["size"], "action": "listed", "endpoint": list_endpoint}
                     for path, info in wanted.items()]
            return self.result(commit=commit, files=files, bytes_total=sum(f["size"] or 0 for f in files),
                               endpoints=[{"endpoint": strip_credentials(list_endpoint), "files": 0, "bytes": 0}]
                               if list_endpoint else [])
        return self.converge(commit, wanted, manifest, state)

    def converge(self, commit: str, wanted: dict, manifest, state) -> dict:
        p, snap = self.params, self.snapshot
        keep, adopt, fetch, removed, old = snap.plan(wanted, manifest, self.repo_id)
        reuse = snap.reusable(fetch, p["reuse_from"], self.repo_id)
        bytes_total = sum((info["size"] or 0) for info in wanted.values())
        to_fetch = sum((info["size"] or 0) for path, info in fetch.items() if path not in reuse)
        new_state = self.wanted_state(commit)
        changed = bool(fetch or adopt or (removed and p["prune"]) or manifest is None or manifest["commit"] != commit
                       or manifest["revision"] != self.revision or state != new_state)
        diff = snap.diff(old, wanted, fetch, removed) if self.module._diff else None
        if self.module.check_mode:
            files = [{"path": path, "size": info["size"], "action": "link" if path in reuse else "fetch" if path in fetch
                      else ("adopted" if path in adopt else "kept"), "endpoint": (keep.get(path) or {}).get("endpoint", "")}
                     for path, info in wanted.items()]
            return self.result(changed=changed, commit=commit, files=files,
                               fetched=sorted(path for path in fetch if path not in reuse), removed=removed,
                               bytes_total=bytes_total, bytes_to_fetch=to_fetch,
                               bytes_linked=sum(reuse[path][1]["size"] for path in reuse), diff=diff)
        with snap.locked():
            linked = snap.link(reuse)
            fetch = {path: info for path, info in fetch.items() if path not in linked}
            to_fetch = sum((info["size"] or 0) for info in fetch.values())
            snap.check_disk(fetch, p["disk_headroom_mb"])
            fetched, endpoint_stats, totals = self.download(commit, fetch, bytes_total - to_fetch, bytes_total)
            snap.check_promoted(wanted, fetched)
            now = _manifest.utc_now_iso()
            entries = []
            for path, info in wanted.items():
                if path in keep:
                    entries.append(dict(keep[path], path=path))
                    continue
                if path in linked:
                    got = linked[path]
                elif path in adopt:
                    got = dict(adopt[path], endpoint=strip_credentials(
                        (old.get(path) or {}).get("endpoint") or self.hub.file_urls(self.endpoints, path, commit)[0][0]))
                else:
                    got = fetched[path]
                entries.append({"path": path, "size": got["size"], "sha256": got["sha256"],
                                "git_sha1": info.get("git_sha1") or (got.get("git_sha1") if path in linked else None),
                                "endpoint": got["endpoint"], "fetched_at": now})
            if p["prune"]:
                snap.prune(removed)
            snap.save(manifest, _manifest.new(self.hub.name, self.repo_id, self.revision, commit, entries),
                      state, new_state)
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

    def download(self, commit: str, fetch: dict, already: int, total: int) -> tuple:
        progress = _http_download.Progress(total_bytes=total, files_total=len(fetch), status_file=self.status_file,
                                           extra={"dest": self.dest, "repo_id": self.repo_id, "commit": commit})
        progress.resumed(already)
        progress.maybe_write(force=True)
        results, errors = {}, {}

        def one(path):
            info = fetch[path]
            tried = []
            for endpoint, url in self.hub.file_urls(self.endpoints, path, commit):
                job = _http_download.FileDownload(self.client, url, self.snapshot.safe_path(path), size=info["size"],
                                                  sha256=info["sha256"], git_sha1=info["git_sha1"], progress=progress,
                                                  label=path, part=self.snapshot.part_path(path),
                                                  credential=self.credential_for(endpoint))
                try:
                    got = job.run()
                except _http_download.DownloadError as exc:
                    tried.append((endpoint, exc))
                    if exc.kind in ("disk", "config"):
                        break
                    continue
                got["endpoint"] = strip_credentials(endpoint)
                got["failed_endpoints"] = [strip_credentials(e) for e, _error in tried]
                progress.file_done(path)
                return path, got, None
            return path, None, tried

        workers = max(1, min(self.params["max_parallel_files"], len(fetch) or 1))
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
                    text = "file %s not found in %s@%s (%s)" % (
                        path, self.repo_id, self.params["commit"] or self.revision, exc.message)
                lines.append("%s via %s: %s" % (path, strip_credentials(endpoint), text))
                if exc.kind == "disk" and exc.needed_bytes:
                    needed += exc.needed_bytes
        head = "%d of %d file(s) could not be downloaded into %s" % (len(errors), len(errors) + len(results), self.dest)
        if needed:
            head += "; the disk is full: about %d more bytes are needed (parts are kept: free space and rerun to resume)" % needed
        return FetchError(head + ".\n" + "\n".join(lines), failed=sorted(errors), bytes_fetched=totals["fetched"],
                          bytes_needed=needed or None)


def run_module(module) -> None:
    """Run model_fetch for an AnsibleModule built from its argument spec; exits through exit_json/fail_json."""
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
        where = getattr(exc, "filename", None) or fetcher.dest
        module.fail_json(msg=scrub("model_fetch failed on %s: %s" % (where, exc.strerror or exc)), **fetcher.result())
    diff = result.pop("diff", None)
    if diff is not None:
        result["diff"] = diff
    module.exit_json(**result)
