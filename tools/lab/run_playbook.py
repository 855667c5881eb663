"""Run a playbook with ansible-runner and print a per-host summary read from its stats, not its text.

    python3 tools/lab/run_playbook.py site.yml -i inventories/lab [--expect-no-changes] [--show-task NAME]
        [--report FILE] [ansible-playbook options: --tags service, --limit, -e k=v]

Exits non-zero when the playbook fails, or when --expect-no-changes is given and any host changed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ansible_runner

REPO = Path(__file__).resolve().parents[2]


def run(playbook: str, inventory: str, extra: list[str]) -> tuple[int, dict, float, list, list]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autoglm-runner-") as private:
        env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        result = ansible_runner.run(
            private_data_dir=private, project_dir=str(REPO), playbook=str(REPO / playbook),
            inventory=str(REPO / inventory), cmdline=" ".join(extra) or None,
            envvars=env, quiet=False, suppress_env_files=True,
        )
        changed_tasks = [
            (event["event_data"].get("host"), event["event_data"].get("task"))
            for event in result.events
            if event.get("event") == "runner_on_ok" and event["event_data"].get("res", {}).get("changed")
        ]
        ok_events = [event["event_data"] for event in result.events if event.get("event") == "runner_on_ok"]
        return result.rc, result.stats or {}, time.monotonic() - started, changed_tasks, ok_events


def summary(stats: dict) -> list[tuple]:
    hosts = sorted({host for key in ("ok", "changed", "failures", "dark", "skipped") for host in stats.get(key, {})})
    return [(host, stats.get("ok", {}).get(host, 0), stats.get("changed", {}).get(host, 0),
             stats.get("failures", {}).get(host, 0), stats.get("dark", {}).get(host, 0)) for host in hosts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("playbook")
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("--expect-no-changes", action="store_true")
    parser.add_argument("--show-task", action="append", default=[], metavar="NAME",
                        help="print each host's msg from the task of this name at the end")
    parser.add_argument("--report", metavar="FILE", help="write stats, changed tasks and duration as JSON")
    # Everything else is ansible-playbook's (--tags service, --limit, -e k=v) and passes through in order.
    args, passthrough = parser.parse_known_args()
    os.chdir(REPO)
    rc, stats, seconds, changed_tasks, ok_events = run(args.playbook, args.inventory, passthrough)
    if args.report:
        Path(args.report).write_text(json.dumps({"rc": rc, "seconds": round(seconds, 1), "stats": stats,
                                                 "changed_tasks": changed_tasks}, indent=1))
    rows = summary(stats)
    print("\n%-16s %5s %8s %7s %12s" % ("host", "ok", "changed", "failed", "unreachable"))
    for row in rows:
        print("%-16s %5d %8d %7d %12d" % row)
    print("%s in %.1fs (rc=%d)" % (args.playbook, seconds, rc))
    shown = [event for event in ok_events if event.get("task") in args.show_task]
    for event in sorted(shown, key=lambda event: event.get("host", "")):
        print("  %s" % event.get("res", {}).get("msg", ""))
    if rc != 0:
        return rc
    if args.expect_no_changes and changed_tasks:
        print("expected no changes, but these tasks changed:", file=sys.stderr)
        for host, task in changed_tasks:
            print("  %s: %s" % (host, task), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
