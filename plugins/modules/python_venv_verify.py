#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: python_venv_verify
short_description: Check every installed file of a venv against pip's RECORD and reinstall only the broken distributions
version_added: "0.2.0"
description:
  - Reads the C(RECORD) of every distribution in the venv's C(site-packages) (each installed file with its size and
    sha256, written by pip at install time) and checks that each file is still there, a regular file, with that size
    (O(check=size)) or also that sha256 (O(check=sha256)).
  - Byte-compiled files (C(__pycache__/*.pyc)) are not checked, since pip records them without a hash and Python rebuilds them.
  - Each broken distribution is reinstalled in place with C(pip install --force-reinstall --no-deps NAME==VERSION)
    from the sources given (the same ones the venv was built from), then checked again. The rest of the venv is
    left alone.
  - A distribution whose C(.dist-info) folder is gone entirely is not seen here; M(autoglm.deploy.python_venv)
    reinstalls those.
options:
  path:
    description: The venv (a link such as C(.../current) is followed).
    type: path
    required: true
  check:
    description:
      - C(size) compares existence, type and size (one C(stat) per file; catches deleted and truncated files).
      - C(sha256) also hashes every file (catches same-size corruption; reads the whole venv).
    type: str
    default: size
    choices: [size, sha256]
  repair:
    description: Reinstall broken distributions. Off, the task only reports them (and fails when any is broken).
    type: bool
    default: true
extends_documentation_fragment:
  - autoglm.deploy.pip_sources
attributes:
  check_mode:
    support: full
    description: Checks the files and reports what would be reinstalled; installs nothing.
  diff_mode:
    support: full
    description: Before lists the broken files per distribution, after lists none.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Repair files deleted or truncated inside the live venv
  autoglm.deploy.python_venv_verify:
    path: /opt/autoglm/venvs/autoglm/current
    no_index: true
    find_links: [https://mirror-01:8090/wheels/]
    cert: /etc/autoglm/python-venv-ca.pem

- name: Hash every installed file (slower; catches same-size corruption)
  autoglm.deploy.python_venv_verify:
    path: /opt/autoglm/venvs/autoglm/current
    check: sha256
    repair: false
"""

RETURN = r"""
venv:
  description: The venv checked (the link resolved).
  returned: always
  type: str
distributions:
  description: How many distributions had a RECORD.
  returned: always
  type: int
files_checked:
  description: Files compared with their RECORD entry.
  returned: always
  type: int
bytes_checked:
  description: Bytes their RECORD sizes add up to (read in full with O(check=sha256)).
  returned: always
  type: int
broken:
  description: Per distribution (C(name==version)), the files that are missing or differ, with the reason (at most 20 each).
  returned: always
  type: dict
  sample:
    "transformers==5.23.0": ["transformers/utils/import_utils.py: missing"]
repaired:
  description: Distributions reinstalled (that would be, in check mode).
  returned: always
  type: list
  elements: str
elapsed_s:
  description: Seconds spent checking (the first pass).
  returned: always
  type: float
"""

import base64
import csv
import glob
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _pip

ENV = {"LC_ALL": "C", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
SHOWN = 20
CHUNK = 1 << 20


def _metadata(dist_info: str) -> tuple:
    """(Name, Version) from METADATA's headers; the folder name is a normalised fallback."""
    name = version = None
    try:
        with open(os.path.join(dist_info, "METADATA"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _sep, value = line.partition(":")
                if key == "Name":
                    name = value.strip()
                elif key == "Version":
                    version = value.strip()
    except OSError:
        pass
    if not name or not version:
        base = os.path.basename(dist_info)[:-len(".dist-info")]
        name, _sep, version = base.partition("-")
    return name, version


def _sha256_b64(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


class RecordChecker:
    """Compares the files each RECORD lists with what is on disk."""

    def __init__(self, venv: str, check: str):
        self.venv = venv
        self.check = check
        self.files = 0
        self.bytes = 0

    def site_packages(self) -> list:
        return sorted(glob.glob(os.path.join(self.venv, "lib", "python*", "site-packages")))

    def distributions(self) -> list:
        """[(pin, site-packages, RECORD path)] for every distribution that has a RECORD."""
        found = []
        for site in self.site_packages():
            for dist_info in sorted(glob.glob(os.path.join(site, "*.dist-info"))):
                record = os.path.join(dist_info, "RECORD")
                if os.path.isfile(record):
                    name, version = _metadata(dist_info)
                    found.append(("%s==%s" % (name, version), site, record))
        return found

    def entries(self, site: str, record: str) -> list:
        """[(absolute path, sha256 or '', size or None)] worth checking."""
        rows = []
        with open(record, encoding="utf-8", newline="") as handle:
            for row in csv.reader(handle):
                if not row or not row[0]:
                    continue
                rel = row[0]
                digest = row[1] if len(row) > 1 else ""
                size = row[2] if len(row) > 2 else ""
                if rel.endswith(".pyc") or "__pycache__/" in rel:
                    continue  # recorded without a hash, rebuilt by Python
                path = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(site, rel))
                if path == record:
                    continue
                algo, _sep, value = digest.partition("=")
                rows.append((path, value if algo == "sha256" else "", int(size) if size.isdigit() else None))
        return rows

    def problem(self, entry: tuple):
        path, digest, size = entry
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return "unreadable (%s)" % exc.strerror
        if not os.path.isfile(path):
            return "not a regular file"
        if size is not None and stat.st_size != size:
            return "size %d, RECORD says %d" % (stat.st_size, size)
        if self.check == "sha256" and digest:
            try:
                if _sha256_b64(path) != digest:
                    return "sha256 differs from RECORD"
            except OSError as exc:
                return "unreadable (%s)" % exc.strerror
        return None

    def run(self, only: set | None = None) -> dict:
        """{pin: [problems]} for the distributions (all, or those in ONLY) with at least one problem."""
        work = []
        for pin, site, record in self.distributions():
            if only is None or pin in only:
                try:
                    work += [(pin, site, entry) for entry in self.entries(site, record)]
                except (OSError, ValueError) as exc:
                    work.append((pin, site, None, "RECORD unreadable (%s)" % exc))
        self.files = len(work)
        self.bytes = sum(item[2][2] or 0 for item in work if item[2] is not None)

        def one(item):
            if item[2] is None:
                return item[0], item[3]
            problem = self.problem(item[2])
            return item[0], (None if problem is None else "%s: %s" % (os.path.relpath(item[2][0], item[1]), problem))

        broken: dict = {}
        if self.check == "sha256":
            # Hashing releases the GIL, so threads keep every core busy.
            with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 2)) as pool:
                results = list(pool.map(one, work, chunksize=64))
        else:
            results = [one(item) for item in work]  # a stat each: threads would only add overhead
        for pin, problem in results:
            if problem:
                broken.setdefault(pin, []).append(problem)
        return broken


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            check=dict(type="str", default="size", choices=["size", "sha256"]),
            repair=dict(type="bool", default=True),
            **_pip.SOURCE_ARGUMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    venv = os.path.realpath(p["path"])
    python = os.path.join(venv, "bin", "python")
    if not os.path.isdir(venv):
        module.fail_json(msg="path %s is not a venv folder (resolved to %s): build it first (python_venv)" % (p["path"], venv))
    if p["no_index"] and not p["find_links"]:
        module.fail_json(msg="no_index is set but find_links is empty: pip would have nowhere to reinstall from")

    checker = RecordChecker(venv, p["check"])
    started = time.monotonic()
    broken = checker.run()
    result = dict(changed=bool(broken), venv=venv, distributions=len(checker.distributions()),
                  files_checked=checker.files, bytes_checked=checker.bytes,
                  broken={pin: problems[:SHOWN] for pin, problems in broken.items()},
                  repaired=sorted(broken), elapsed_s=round(time.monotonic() - started, 3))
    if module._diff and broken:
        result["diff"] = dict(before="".join("%s: %s\n" % (pin, problem) for pin in sorted(broken) for problem in broken[pin]),
                              after="")
    if not broken or module.check_mode:
        module.exit_json(**result)
    if not p["repair"]:
        module.fail_json(msg="%d distribution(s) in %s have missing or changed files: %s; rerun with repair on to "
                             "reinstall them" % (len(broken), venv, ", ".join(sorted(broken))), **result)
    if not os.access(python, os.X_OK):
        module.fail_json(msg="%s is missing: the venv itself is broken; remove %s and rerun so python_venv builds it again"
                             % (python, venv), **result)

    pins = sorted(broken)
    args = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off", "--force-reinstall", "--no-deps",
            *pins]
    args += _pip.source_args(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"], p["trusted_hosts"],
                             p["cert"], p["timeout"], p["retries"])
    rc, out, err = module.run_command(args, environ_update=ENV)
    output = (out or "") + (err or "")
    if rc != 0:
        sources = _pip.describe_sources(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"])
        target = "the venv %s" % venv
        urls = [] if p["no_index"] else ([p["index_url"]] if p["index_url"] else []) + list(p["extra_index_urls"])
        module.fail_json(msg="reinstalling %s into %s failed: %s" % (
            ", ".join(pins), venv, _pip.diagnose_install(output, urls, sources, target)), output=output[-4000:], **result)
    still = checker.run(only=set(pins))
    if still:
        result["broken"] = still
        module.fail_json(msg="%s still has broken files after reinstalling %s: %s" % (
            venv, ", ".join(sorted(still)), "; ".join(problem for pin in sorted(still) for problem in still[pin][:3])),
            **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
