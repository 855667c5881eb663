# SPDX-License-Identifier: Apache-2.0
"""Action for autoglm.deploy.job_progress: async_status first (its result, unchanged, once the job ends), then,
while the job runs, the job_progress module on the node for a `progress` key the progress callback prints."""
from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        jid = args.get("jid")
        if not jid:
            return dict(result, failed=True, msg="jid is required: the registered ansible_job_id of the async task")
        # The same async folder async_status uses (the shell's async_dir option).
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        status = self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                      module_args={"jid": jid, "mode": "status", "_async_dir": async_dir})
        result = merge_hash(result, status)
        for key in ("started", "finished"):
            result[key] = bool(result.get(key))
        result.setdefault("ansible_job_id", jid)
        if result["finished"] or result.get("failed"):
            return result
        probe = self._execute_module(module_name="autoglm.deploy.job_progress", task_vars=task_vars, module_args=args)
        if probe.get("failed"):
            # A progress file we cannot read must not fail a job that is still working.
            result["progress"] = {"label": args.get("label", "job"), "phase": "running (%s)" % probe.get("msg", "?")}
        else:
            result["progress"] = probe.get("progress")
        return result
