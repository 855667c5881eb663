#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: job_progress
short_description: Poll a background (async) job and say how far it got - done, total, rate and time left
version_added: "0.2.0"
description:
  - An action plugin asks C(async_status) about O(jid) (same result, so C(until) on RV(finished) works as with
    C(async_status)); while the job runs, this module reads its progress on the node and returns it as RV(progress),
    which the C(autoglm.deploy.progress) callback prints on every retry.
  - O(kind=status_file) reads the JSON status file M(autoglm.deploy.model_fetch) writes (bytes and files done, rate, ETA).
  - O(kind=pip_log) reads the log pip writes when C(PIP_LOG) is set in its environment. pip logs no byte progress, so
    what is reported is what the log and the disk show, and no more - while collecting, the wheels found and their
    sizes; while installing, the distributions whose C(.dist-info/RECORD) exists in O(venv) of those pip said it is
    installing, and the bytes of their wheels; then the checks after the install.
options:
  jid:
    description: The job id of the async task (its registered C(ansible_job_id)).
    type: str
    required: true
  kind:
    description: Where the progress is read from.
    type: str
    required: true
    choices: [status_file, pip_log]
  path:
    description: The status file (O(kind=status_file)) or pip's log file (O(kind=pip_log)).
    type: path
    required: true
  venv:
    description: The venv pip installs into (O(kind=pip_log)); installed distributions are counted there.
    type: path
  wheels_total:
    description: How many wheels the install will collect, when known beforehand (a wheelhouse); 0 when unknown.
    type: int
    default: 0
  bytes_total:
    description: Bytes of those wheels, when known beforehand; 0 when unknown.
    type: int
    default: 0
  label:
    description: What the job is, as the progress line names it (C(weights), C(venv)).
    type: str
    default: job
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Reads only; there is nothing to diff.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Start downloading
  autoglm.deploy.model_fetch:
    dest: /srv/models/m/abc
    repo_id: org/m
  async: 14400
  poll: 0
  register: job

- name: Wait for the download, printing bytes done, rate and ETA on each poll
  autoglm.deploy.job_progress:
    jid: "{{ job.ansible_job_id }}"
    kind: status_file
    path: /srv/models/m/abc/.autoglm/fetch-status.json
    label: weights
  register: wait
  until: wait.finished
  retries: 1440
  delay: 10
"""

RETURN = r"""
finished:
  description: Whether the job ended (then the result is the job's own, as C(async_status) returns it).
  returned: always
  type: bool
progress:
  description:
    - How far the job got. C(done)/C(total) count C(unit) (bytes); C(items_done)/C(items_total) count C(items) (files,
      packages); C(rate) is bytes per second, C(eta_s) seconds left; any of them is null when not known yet.
  returned: while the job runs
  type: dict
  sample: {"label": "weights", "phase": "downloading", "unit": "bytes", "done": 851443712, "total": 21045339750,
           "items": "files", "items_done": 1, "items_total": 12, "rate": 102760448, "eta_s": 196.5}
"""

import glob
import json
import os
import re
import time
from urllib.parse import unquote

from ansible.module_utils.basic import AnsibleModule

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d),(\d{3}) (.*)$")
_PROCESSING = re.compile(r"^Processing (\S+\.whl)\b")
_DOWNLOAD = re.compile(r"^\s*(?:Downloading|Using cached) (\S+\.whl) \(([\d.]+) (bytes|kB|MB|GB)\)")
_INSTALLING = re.compile(r"^Installing collected packages: (.*)$")
_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}  # pip prints decimal units


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_key(filename: str) -> tuple:
    """(canonical name, version) from a wheel file name (name-version-tags.whl)."""
    parts = os.path.basename(filename).split("-")
    return canonical(parts[0]), parts[1] if len(parts) > 1 else ""


def _when(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))  # pip logs local time


def read_status_file(path: str, label: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return dict(label=label, phase="starting", unit="bytes", done=None, total=None, rate=None, eta_s=None)
    return dict(label=label, phase=data.get("state") or "running", unit="bytes", done=data.get("bytes_done"),
                total=data.get("bytes_total"), items="files", items_done=data.get("files_done"),
                items_total=data.get("files_total"), rate=data.get("rate_bytes_per_s"), eta_s=data.get("eta_s"))


def installed(venv: str | None) -> set:
    """(canonical name, version) of every distribution whose RECORD exists (pip writes RECORD last)."""
    found = set()
    if not venv:
        return found
    for record in glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "*.dist-info", "RECORD")):
        name, _sep, version = os.path.basename(os.path.dirname(record))[:-len(".dist-info")].partition("-")
        found.add((canonical(name), version))
    return found


def read_pip_log(path: str, venv: str | None, wheels_total: int, bytes_total: int, label: str, now: float) -> dict:
    wheels: dict = {}  # (name, version) -> bytes
    installing = None
    started = install_started = None
    finished = False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                stamp = _STAMP.match(line)
                if not stamp:
                    continue
                text = stamp.group(3)
                if started is None:
                    started = _when(stamp.group(1))
                match = _PROCESSING.match(text)
                if match:
                    try:
                        wheels[wheel_key(match.group(1))] = os.path.getsize(match.group(1))
                    except OSError:
                        wheels.setdefault(wheel_key(match.group(1)), 0)
                    continue
                match = _DOWNLOAD.match(text)
                if match:
                    wheels[wheel_key(unquote(match.group(1).rsplit("/", 1)[-1]))] = int(
                        float(match.group(2)) * _UNITS[match.group(3)])
                    continue
                match = _INSTALLING.match(text)
                if match:
                    installing = {canonical(name.strip()) for name in match.group(1).split(",") if name.strip()}
                    install_started = _when(stamp.group(1))
                elif text.startswith("Successfully installed"):
                    finished = True
    except OSError:
        return dict(label=label, phase="creating the venv", unit="bytes", done=None, total=None, rate=None, eta_s=None)

    if installing is None:
        total = bytes_total or None
        done = sum(wheels.values())
        elapsed = max(now - (started or now), 0.001)
        return dict(label=label, phase="collecting wheels", unit="bytes", done=done, total=total,
                    items="wheels", items_done=len(wheels), items_total=wheels_total or None,
                    rate=int(done / elapsed) if done else None, eta_s=None)

    targets = {key: size for key, size in wheels.items() if key[0] in installing}
    total = sum(targets.values())
    on_disk = installed(venv)
    ready = [key for key in targets if key in on_disk]
    done = sum(targets[key] for key in ready)
    if finished:
        return dict(label=label, phase="checking the venv (pip check, imports)", unit="bytes", done=total, total=total,
                    items="packages", items_done=len(installing), items_total=len(installing), rate=None, eta_s=None)
    elapsed = max(now - (install_started or now), 0.001)
    rate = done / elapsed if done else 0
    # Every RECORD is written but pip has not said it is done: it is removing what it replaced.
    phase = "finishing the install" if ready and len(ready) == len(installing) else "installing"
    return dict(label=label, phase=phase, unit="bytes", done=done, total=total, items="packages",
                items_done=len(ready), items_total=len(installing), rate=int(rate) if rate else None,
                eta_s=round((total - done) / rate, 1) if rate else None)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            jid=dict(type="str", required=True),
            kind=dict(type="str", required=True, choices=["status_file", "pip_log"]),
            path=dict(type="path", required=True),
            venv=dict(type="path"),
            wheels_total=dict(type="int", default=0),
            bytes_total=dict(type="int", default=0),
            label=dict(type="str", default="job"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["kind"] == "status_file":
        progress = read_status_file(p["path"], p["label"])
    else:
        progress = read_pip_log(p["path"], p["venv"], p["wheels_total"], p["bytes_total"], p["label"], time.time())
    module.exit_json(changed=False, progress=progress)


if __name__ == "__main__":
    main()
