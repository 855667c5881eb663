# SPDX-License-Identifier: Apache-2.0
"""Shared pip plumbing for python_venv and python_wheelhouse: source options, exact-pin checks,
the input hash that decides whether anything must be rebuilt, and reading pip's failures into a
message that names the package, the index or the disk.

Standard library only: this runs on the target nodes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re

# The environment every pip and probe run gets: C locale (messages are parsed), no version check, no prompt.
ENV = {"LC_ALL": "C", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}

# name[extras]==version[; markers] - an exact pin. "===" (arbitrary equality) counts too.
# Where pip gets packages: the options of every pip-driving module (documented once, doc fragment pip_sources).
SOURCE_ARGUMENT_SPEC = {
    "index_url": {"type": "str"},
    "extra_index_urls": {"type": "list", "elements": "str", "default": []},
    "find_links": {"type": "list", "elements": "str", "default": []},
    "no_index": {"type": "bool", "default": False},
    "trusted_hosts": {"type": "list", "elements": "str", "default": []},
    "cert": {"type": "path"},
    "timeout": {"type": "int", "default": 30},
    "retries": {"type": "int", "default": 2},
}

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*===?\s*([^\s;,<>=!~]+)\s*(;.*)?$")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

_MISSING = (
    re.compile(r"No matching distribution found for ([^\s;]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s;]+)"),
)
_RETRY = re.compile(r"Retrying \(Retry\([^)]*\)\) after connection broken by '([^']*)'")
_FETCH = re.compile(r"Could not fetch URL (\S+?):? (There was a problem .*|.*)$")
_HOSTPORT = re.compile(r"host='([^']+)', port=(\d+)")
_CHECK_LINE = re.compile(r"^(\S+) (\S+) (has requirement|requires) (.*)$")
_CONFLICT = re.compile(r"Cannot install (.*?) because these package versions have conflicting dependencies")


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def record_digest(data: bytes) -> str:
    """The hash field of a RECORD line (PEP 376/427): urlsafe base64 of the sha256, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    return canonical_name(match.group(1)) if match else requirement.strip()


def unpinned(requirements: list) -> list:
    """Requirements that are not exact pins (name==version)."""
    return [req for req in requirements if not _PIN.match(req)]


def source_args(index_url: str | None = None, extra_index_urls: list | None = None, find_links: list | None = None,
                no_index: bool = False, trusted_hosts: list | None = None, cert: str | None = None,
                timeout: int | None = None, retries: int | None = None) -> list:
    """pip command-line options for where packages come from."""
    args = []
    if no_index:
        args.append("--no-index")
    else:
        if index_url:
            args += ["--index-url", index_url]
        for url in extra_index_urls or []:
            args += ["--extra-index-url", url]
    for link in find_links or []:
        args += ["--find-links", link]
    for host in trusted_hosts or []:
        args += ["--trusted-host", host]
    if cert:
        args += ["--cert", cert]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if retries is not None:
        args += ["--retries", str(retries)]
    return args


def describe_sources(index_url: str | None, extra_index_urls: list | None, find_links: list | None,
                     no_index: bool) -> str:
    parts = []
    if no_index:
        parts.append("no index")
    else:
        parts.append("index %s" % (index_url or "pip's configured default"))
        parts += ["extra index %s" % url for url in extra_index_urls or []]
    parts += ["wheels in %s" % link for link in find_links or []]
    return ", ".join(parts)


def inputs_hash(inputs: dict) -> str:
    """sha256 of a canonical JSON rendering: the same inputs always give the same hash."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _index_named(hostport: tuple | None, urls: list) -> str | None:
    if hostport is None:
        return None
    host, port = hostport
    for url in urls:
        if "//%s:%s" % (host, port) in url or ("//%s/" % host in url + "/" and port in ("80", "443")):
            return url
    return None


def unreachable_from_output(output: str, urls: list):
    """(index, reason) for the first connection failure pip logged (it logs them only when it retries)."""
    for line in output.splitlines():
        retry = _RETRY.search(line)
        fetch = _FETCH.search(line)
        if retry or fetch or "Max retries exceeded" in line or "Failed to establish a new connection" in line:
            match = _HOSTPORT.search(line)
            named = _index_named(match.groups() if match else None, urls)
            if fetch and not named:
                named = fetch.group(1)
            reason = retry.group(1) if retry else fetch.group(2) if fetch else line.strip()
            reason = re.sub(r"^\w+\('?<[^>]*>: ", "", reason).rstrip("')")
            return named or ", ".join(urls) or "the package index", reason
    return None


def diagnose_install(output: str, urls: list, sources: str, target: str, unreachable: list | None = None) -> str:
    """One sentence saying why a pip install/download failed, naming what is at fault.

    output: pip's stdout+stderr; urls: the index URLs pip was given; sources: describe_sources();
    target: what the wheels had to fit ("Python 3.11 on linux x86_64"); unreachable: [(url, reason)]
    found by probing the indexes after the failure (pip itself stays silent when it does not retry).
    """
    if "No space left on device" in output or "[Errno 28]" in output:
        return "disk full: pip ran out of space (No space left on device); free space and rerun"
    found = list(unreachable or [])
    if not found:
        parsed = unreachable_from_output(output, urls)
        if parsed:
            found.append(parsed)
    missing = None
    for pattern in _MISSING:
        hits = pattern.findall(output)
        if hits:
            missing = hits[-1]
            break
    if found:
        message = "; ".join("package index %s is unreachable (%s)" % item for item in found)
        if missing:
            message += "; could not get %s" % missing
        return message + "; check the URL, proxy and CA bundle, or install from a wheelhouse"
    if missing:
        return ("no distribution of %s for %s in %s (No matching distribution found for %s); pin a version that "
                "exists for this platform or add its wheel to the wheelhouse" % (
                    requirement_name(missing), target, sources, missing))
    conflict = _CONFLICT.search(output)
    if conflict:
        causes = [line.strip() for line in output.splitlines() if " depends on " in line]
        return "conflicting pins: cannot install %s (%s)" % (conflict.group(1), "; ".join(causes) or "see pip output")
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    return "; ".join(errors[-3:]) or (output.strip().splitlines() or ["pip failed with no output"])[-1]


def probe_indexes(open_url, urls: list, cert: str | None = None, timeout: int = 10) -> list:
    """[(url, reason)] for each index that does not answer; open_url is ansible.module_utils.urls.open_url."""
    down = []
    for url in urls:
        try:
            open_url(url.rstrip("/") + "/", method="GET", timeout=timeout, ca_path=cert, validate_certs=True).close()
        except Exception as exc:  # URLError, HTTPError (a 404 still answers), ssl errors, timeouts
            if getattr(exc, "code", None) is not None:
                continue  # it answered over HTTP: reachable, the package is what is missing
            down.append((url, str(getattr(exc, "reason", None) or exc)))
    return down


def diagnose_check(output: str) -> tuple:
    """(packages at fault, message) from `pip check` output."""
    culprits, lines = [], []
    for line in output.splitlines():
        match = _CHECK_LINE.match(line.strip())
        if match:
            culprits.append(canonical_name(match.group(1)))
            lines.append(line.strip())
    return culprits, "; ".join(lines) or output.strip()
