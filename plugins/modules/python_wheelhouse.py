#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: python_wheelhouse
short_description: Download the wheels for a requirements set once, into a reusable wheelhouse
version_added: "0.1.0"
description:
  - Runs C(pip download) for O(requirements) into C(<path>/<hash12>), where the hash covers the requirements,
    constraints, sources and the target Python/platform. A set that is already complete is reused (no pip runs).
  - Meant to run on the controller (C(delegate_to localhost), C(run_once)); the set is then copied to nodes
    that install from it with C(--no-index) (see M(autoglm.deploy.python_venv), option O(autoglm.deploy.python_venv#module:no_index)).
  - Without O(python_version) and O(platforms) the wheels fit the interpreter that runs pip here; with them,
    pip fetches binary wheels for that Python and those platforms (C(--only-binary=:all:)).
  - The set is downloaded into a temporary directory and renamed into place when pip succeeded, so a failed
    download never leaves a set that looks complete.
options:
  path:
    description: Directory holding the wheel sets.
    type: path
    required: true
  requirements:
    description: Requirements, as in a requirements file.
    type: list
    elements: str
    required: true
  constraints:
    description: Constraints for transitive dependencies.
    type: list
    elements: str
    default: []
  require_pins:
    description: Refuse requirements that are not exact pins (C(name==version)).
    type: bool
    default: true
  python:
    description: Interpreter whose pip downloads; the one running this module when unset.
    type: str
  python_version:
    description: Python version the wheels must fit (pip C(--python-version), for example C(3.11)).
    type: str
  platforms:
    description: Platform tags the wheels must fit (pip C(--platform), for example C(manylinux_2_28_x86_64)).
    type: list
    elements: str
    default: []
  implementation:
    description: Python implementation the wheels must fit (pip C(--implementation)), with O(python_version) or O(platforms).
    type: str
    default: cp
  keep:
    description: Wheel sets kept under O(path), the one used now included; 0 keeps all.
    type: int
    default: 3
extends_documentation_fragment:
  - autoglm.deploy.pip_sources
attributes:
  check_mode:
    support: full
    description: Reports whether a download is needed; downloads nothing.
  diff_mode:
    support: none
    description: No diff; RV(files) and RV(pip_runs) say what was downloaded.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Build the wheelhouse on the controller, once
  autoglm.deploy.python_wheelhouse:
    path: "{{ playbook_dir }}/.cache/wheelhouse"
    requirements: [torch==2.13.0, transformers==5.23.0]
  delegate_to: localhost
  run_once: true
  register: wheelhouse

- name: Wheels for Python 3.12 nodes from a 3.11 controller
  autoglm.deploy.python_wheelhouse:
    path: /srv/wheelhouse
    requirements: [transformers==5.23.0]
    python_version: "3.12"
    platforms: [manylinux_2_28_x86_64, manylinux2014_x86_64]
"""

RETURN = r"""
path:
  description: The wheel set (a directory of wheels plus C(manifest.json)).
  returned: always
  type: str
hash:
  description: sha256 of the inputs; its first 12 digits name the set.
  returned: always
  type: str
name:
  description: The set's directory name (12 hex digits).
  returned: always
  type: str
python_version:
  description: C(major.minor) of the Python the wheels fit.
  returned: always
  type: str
files:
  description: Wheel files in the set (empty in check mode when the set is missing).
  returned: always
  type: list
  elements: str
size_mib:
  description: Total size of the set.
  returned: always
  type: float
pip_runs:
  description: How many times pip ran; 0 when the set was already complete.
  returned: always
  type: int
pruned:
  description: Older sets removed because more than O(keep) existed.
  returned: always
  type: list
  elements: str
package:
  description: The package a failure is about, when one could be named.
  returned: failure
  type: str
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.autoglm.deploy.plugins.module_utils import _pip

MANIFEST = "manifest.json"
NAME = re.compile(r"^[0-9a-f]{12}$")
PROBE = "import json, platform, sysconfig; print(json.dumps([platform.python_version(), sysconfig.get_platform()]))"


def read_manifest(set_dir: str):
    try:
        with open(os.path.join(set_dir, MANIFEST), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def prune(path: str, active: str, keep: int) -> list:
    if keep <= 0:
        return []
    sets = []
    for entry in os.listdir(path):
        manifest = read_manifest(os.path.join(path, entry)) if NAME.match(entry) and entry != active else None
        if manifest is not None:
            sets.append((manifest.get("created_at") or 0, entry))
    sets.sort(reverse=True)
    removed = []
    for _created_at, entry in sets[keep - 1:]:
        shutil.rmtree(os.path.join(path, entry), ignore_errors=True)
        removed.append(os.path.join(path, entry))
    return removed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            requirements=dict(type="list", elements="str", required=True),
            constraints=dict(type="list", elements="str", default=[]),
            require_pins=dict(type="bool", default=True),
            python=dict(type="str"),
            python_version=dict(type="str"),
            platforms=dict(type="list", elements="str", default=[]),
            implementation=dict(type="str", default="cp"),
            **_pip.SOURCE_ARGUMENT_SPEC,
            keep=dict(type="int", default=3),
        ),
        supports_check_mode=True,
    )
    p = module.params
    requirements = [req.strip() for req in p["requirements"] if req.strip()]
    constraints = [req.strip() for req in p["constraints"] if req.strip()]
    if not requirements:
        module.fail_json(msg="requirements is empty: give at least one package (name==version)")
    loose = _pip.unpinned(requirements) if p["require_pins"] else []
    if loose:
        module.fail_json(msg="requirements must be exact pins (name==version), these are not: %s" % ", ".join(loose),
                         package=_pip.requirement_name(loose[0]))

    python = p["python"] or sys.executable
    if not os.path.isabs(python):
        python = module.get_bin_path(python, required=True)
    rc, out, err = module.run_command([python, "-c", PROBE], environ_update=_pip.ENV)
    if rc != 0:
        module.fail_json(msg="python '%s' does not run: %s" % (python, (err or out).strip()))
    here_version, here_platform = json.loads(out.strip().splitlines()[-1])
    cross = bool(p["python_version"] or p["platforms"])
    target_version = p["python_version"] or ".".join(here_version.split(".")[:2])
    target_platforms = p["platforms"] or [here_platform]

    inputs = {"requirements": requirements, "constraints": constraints,
              "target": {"python": target_version, "platforms": target_platforms,
                         "implementation": p["implementation"] if cross else "native"},
              "sources": {key: p[key] for key in ("index_url", "extra_index_urls", "find_links", "no_index", "trusted_hosts")}}
    digest = _pip.inputs_hash(inputs)
    name = digest[:12]
    set_dir = os.path.join(p["path"], name)
    result = dict(changed=False, path=set_dir, hash=digest, name=name, python_version=target_version,
                  files=[], size_mib=0.0, pip_runs=0, pruned=[])

    manifest = read_manifest(set_dir)
    if manifest is not None and manifest.get("hash") == digest:
        result.update(files=manifest["files"], size_mib=manifest["size_mib"])
        module.exit_json(**result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)

    os.makedirs(p["path"], exist_ok=True)
    tmp = tempfile.mkdtemp(dir=p["path"], prefix=".%s." % name)
    try:
        with open(os.path.join(tmp, "requirements.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(requirements) + "\n")
        args = [python, "-m", "pip", "download", "--no-input", "--progress-bar", "off", "--dest", tmp,
                "-r", os.path.join(tmp, "requirements.txt")]
        if constraints:
            with open(os.path.join(tmp, "constraints.txt"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(constraints) + "\n")
            args += ["-c", os.path.join(tmp, "constraints.txt")]
        if cross:
            args += ["--only-binary=:all:", "--python-version", target_version, "--implementation", p["implementation"]]
            for platform in target_platforms:
                args += ["--platform", platform]
        args += _pip.source_args(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"],
                                 p["trusted_hosts"], p["cert"], p["timeout"], p["retries"])
        result["pip_runs"] = 1
        rc, out, err = module.run_command(args, environ_update=_pip.ENV)
        output = (out or "") + (err or "")
        if rc != 0:
            urls = [] if p["no_index"] else ([p["index_url"]] if p["index_url"] else []) + list(p["extra_index_urls"])
            sources = _pip.describe_sources(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"])
            target = "Python %s on %s" % (target_version, ", ".join(target_platforms))
            missing = re.findall(r"No matching distribution found for ([^\s;]+)", output)
            down = _pip.probe_indexes(open_url, urls, p["cert"], p["timeout"]) if urls else []
            fail = dict(result)
            fail.update(changed=False, output=output[-4000:])
            if missing:
                fail["package"] = _pip.requirement_name(missing[-1])
            module.fail_json(msg="building the wheelhouse %s failed: %s" % (
                set_dir, _pip.diagnose_install(output, urls, sources, target, down)), **fail)
        files = sorted(entry for entry in os.listdir(tmp) if entry.endswith((".whl", ".tar.gz", ".zip")))
        size = sum(os.path.getsize(os.path.join(tmp, entry)) for entry in files) / (1024.0 * 1024.0)
        manifest = {"hash": digest, "inputs": inputs, "files": files, "size_mib": round(size, 1),
                    "created_at": time.time()}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1, sort_keys=True)
        os.chmod(tmp, 0o755)
        if os.path.lexists(set_dir):
            shutil.rmtree(set_dir)
        os.replace(tmp, set_dir)
    except OSError as exc:
        hint = "disk full: " if getattr(exc, "errno", None) == 28 else ""
        module.fail_json(msg="%sbuilding the wheelhouse %s failed: %s" % (hint, set_dir, exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(files=manifest["files"], size_mib=manifest["size_mib"], pruned=prune(p["path"], name, p["keep"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
