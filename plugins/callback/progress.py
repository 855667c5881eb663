# SPDX-License-Identifier: Apache-2.0
"""Progress callback: one line per host and poll of a long background job (weights download, venv build)."""
from __future__ import annotations

DOCUMENTATION = r"""
---
name: progress
type: notification
short_description: One progress line per host on every poll of a long job - done, total, rate, time left
version_added: "0.2.0"
description:
  - "When a task retries (C(until)) and its result carries a C(progress) mapping, as
    M(autoglm.deploy.job_progress) returns while a job runs, prints one line for that host, for example
    C(node1: weights running 812.0 MiB / 19.6 GiB (4%), 3/12 files, 98.0 MiB/s, ETA 3m15s)."
  - Unknown parts are left out rather than guessed (pip logs no byte progress, see the module).
  - Lines go to stdout beside the normal output; with a JSON stdout callback they go to stderr, so the
    JSON stays parseable.
  - Enable it with C(callbacks_enabled = autoglm.deploy.progress) in C(ansible.cfg).
requirements:
  - enable in configuration
"""

from ansible import constants as C
from ansible.plugins.callback import CallbackBase

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count) -> str:
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % count  # not reached


def human_duration(seconds) -> str:
    seconds = round(float(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%dh%02dm" % (hours, minutes)
    if minutes:
        return "%dm%02ds" % (minutes, secs)
    return "%ds" % secs


def progress_line(host: str, progress: dict) -> str:
    """The line for one host; every part is optional except the host and what the job is."""
    parts = []
    head = "%s: %s" % (host, progress.get("label") or "job")
    if progress.get("phase"):
        head += " " + str(progress["phase"])
    done, total = progress.get("done"), progress.get("total")
    if done is not None and total:
        parts.append("%s / %s (%d%%)" % (human_bytes(done), human_bytes(total), min(100, int(100 * done / total))))
    elif done:
        parts.append(human_bytes(done))
    items_done, items_total, items = progress.get("items_done"), progress.get("items_total"), progress.get("items")
    if items and items_done is not None:
        parts.append("%d/%s %s" % (items_done, items_total if items_total else "?", items))
    if progress.get("rate"):
        parts.append("%s/s" % human_bytes(progress["rate"]))
    if progress.get("eta_s") is not None:
        parts.append("ETA %s" % human_duration(progress["eta_s"]))
    return head + (" " + ", ".join(parts) if parts else "")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "autoglm.deploy.progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        stdout_callback = str(C.config.get_config_value("DEFAULT_STDOUT_CALLBACK") or "")
        self._to_stderr = "json" in stdout_callback

    def v2_runner_retry(self, result):
        progress = result._result.get("progress")
        if not isinstance(progress, dict):
            return
        self._display.display(progress_line(result._host.get_name(), progress), stderr=self._to_stderr)
