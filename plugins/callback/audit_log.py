# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
name: audit_log
type: notification
short_description: Write one JSON line per task result, and a summary per run, to an audit file
version_added: "0.1.0"
description:
  - For audit trails, each task result becomes one JSON object on its own line - time, user, controller,
    playbook, host, task, action, changed/failed/skipped/unreachable and duration - and each run ends with a
    summary line (hosts, ok/changed/failed counts, duration).
  - It never records module arguments or results. For tasks with C(no_log) it records no message at all;
    otherwise only a failure message, cut to 500 characters.
  - Enable it with C(callbacks_enabled = autoglm.deploy.audit_log) in C(ansible.cfg).
requirements:
  - enable in configuration
options:
  path:
    description: File the JSON lines are appended to; its directory is created if missing.
    type: path
    default: ~/.ansible/autoglm-audit.jsonl
    env:
      - name: AUTOGLM_AUDIT_LOG
    ini:
      - section: callback_audit_log
        key: path
"""

import getpass
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone

from ansible.plugins.callback import CallbackBase

MESSAGE_LIMIT = 500


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "autoglm.deploy.audit_log"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.run_id = str(uuid.uuid4())
        self.user = getpass.getuser()
        self.controller = socket.gethostname()
        self.playbook = None
        self.run_started = time.monotonic()
        self.task_started: dict = {}
        self.path = None

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.path = os.path.expanduser(self.get_option("path"))
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)

    def _write(self, record: dict) -> None:
        record = dict({"time": _now(), "run_id": self.run_id, "user": self.user, "controller": self.controller,
                       "playbook": self.playbook}, **record)
        # One write per line, append mode: concurrent runs never interleave within a line.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)
        self.run_started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.task_started[task._uuid] = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self.task_started[task._uuid] = time.monotonic()

    def _record_result(self, result, status: str) -> None:
        task = result._task
        res = result._result
        started = self.task_started.get(task._uuid)
        record = {
            "event": "task",
            "host": result._host.get_name(),
            "task": task.get_name(),
            "action": task.action,
            "status": status,
            "changed": bool(res.get("changed", False)),
            "failed": status == "failed",
            "duration_s": round(time.monotonic() - started, 3) if started else None,
        }
        if status in ("failed", "unreachable") and not task.no_log and not res.get("_ansible_no_log"):
            record["msg"] = str(res.get("msg", ""))[:MESSAGE_LIMIT]
        self._write(record)

    def v2_runner_on_ok(self, result):
        self._record_result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record_result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record_result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record_result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._write({
            "event": "summary",
            "hosts": {host: stats.summarize(host) for host in hosts},
            "changed_total": sum(stats.summarize(host)["changed"] for host in hosts),
            "failed_hosts": [host for host in hosts if stats.summarize(host)["failures"] or stats.summarize(host)["unreachable"]],
            "duration_s": round(time.monotonic() - self.run_started, 3),
        })
