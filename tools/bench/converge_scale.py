#!/usr/bin/env python3
"""Benchmark: site.yml converge time on the lab for 1, 3 and 6 GPU nodes.

    python3 tools/bench/converge_scale.py [--nodes 1,3,6] [--slowest 5]

For each fleet size: the lab is rebuilt from scratch (tools/lab.sh down/up with LAB_GPU_NODES=N, the hub
publishes the tiny model), then site.yml runs three times through ansible-runner (tools/lab/run_playbook.py):
the first converge, a no-op rerun, and a rerun after one drift (congestion control set to reno on lab-node1);
nodes are reached over SSH, as the lab inventory does. Prints wall time, changed count and task results per
run, the no-op/first ratio (goal <= 15%), the no-op growth against 1 node (goal: 6 nodes <= 1.3x), the drift
repair against the no-op (goal <= 1.5x), and the slowest tasks of each run read from the audit log. Run as
root; the lab is left down at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def lab(*args: str, nodes: int) -> None:
    env = dict(os.environ, LAB_GPU_NODES=str(nodes))
    subprocess.run([str(REPO / "tools/lab.sh"), *args], check=True, env=env, stdout=subprocess.DEVNULL)


def write_inventory(root: Path, nodes: int) -> Path:
    """The lab inventory with N GPU nodes; group_vars are the lab's own (a link, so nothing drifts apart)."""
    inventory = root / "inventory"
    inventory.mkdir()
    # Addresses as tools/lab.sh gives them (lab_address).
    gpu = "".join("            lab-node%d: {ansible_host: 10.77.10.%d}\n" % (index, 20 + index) for index in range(1, nodes + 1))
    text = (REPO / "inventories/lab/hosts.yml").read_text()
    marker = "        gpu_nodes:\n          hosts:\n"
    start = text.index(marker) + len(marker)
    end = text.index("        # The in-cluster model mirror")
    (inventory / "hosts.yml").write_text(text[:start] + gpu + text[end:])
    (inventory / "group_vars").symlink_to(REPO / "inventories/lab/group_vars")
    return inventory


def playbook(path: str, inventory: Path, work: Path, label: str) -> dict:
    report, audit = work / ("%s.json" % label), work / ("%s.audit.jsonl" % label)
    env = dict(os.environ, AUTOGLM_AUDIT_LOG=str(audit), ANSIBLE_CACHE_PLUGIN="memory")
    # The lab inventory finds its cache, CA and SSH key beside itself unless told; this one is a copy in a
    # temporary folder, so point it at the lab's (as tools/lab/lib.sh does).
    for name, default in (("AUTOGLM_LAB_DIR", ".cache/lab"), ("AUTOGLM_LAB_PKI", ".cache/lab/pki"),
                          ("AUTOGLM_LAB_SSH", ".cache/lab/ssh")):
        env.setdefault(name, str(REPO / default))
    proc = subprocess.run([PYTHON, str(REPO / "tools/lab/run_playbook.py"), path, "-i", str(inventory),
                           "--report", str(report)], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit("%s (%s) failed:\n%s" % (path, label, (proc.stdout + proc.stderr)[-3000:]))
    data = json.loads(report.read_text())
    records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    tasks = [record for record in records if record.get("event") == "task"]
    slowest = collections.defaultdict(float)
    for record in tasks:
        slowest[record["task"]] = max(slowest[record["task"]], record.get("duration_s") or 0.0)
    data["task_results"] = len(tasks)
    data["changed_total"] = sum(data["stats"].get("changed", {}).values())
    data["slowest"] = sorted(slowest.items(), key=lambda item: -item[1])
    return data


def drift(node: str) -> None:
    subprocess.run(["docker", "exec", node, "sh", "-c",
                    "mount -o remount,rw /proc/sys && sysctl -qw net.ipv4.tcp_congestion_control=reno"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,3,6", help="fleet sizes, comma separated")
    parser.add_argument("--slowest", type=int, default=5, help="slowest tasks listed per run")
    args = parser.parse_args()
    sizes = [int(size) for size in args.nodes.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="autoglm-converge-") as tmp:
        for nodes in sizes:
            work = Path(tmp) / ("n%d" % nodes)
            work.mkdir()
            print("== %d node(s): rebuilding the lab" % nodes, file=sys.stderr, flush=True)
            lab("down", nodes=nodes)
            lab("up", nodes=nodes)
            inventory = write_inventory(work, nodes)
            playbook("tools/lab/hub.yml", inventory, work, "hub")
            runs = {}
            for label in ("first", "noop", "drift"):
                if label == "drift":
                    drift("lab-node1")
                runs[label] = playbook("site.yml", inventory, work, label)
                print("   site.yml %-5s %7.1fs  changed=%d  task results=%d" % (
                    label, runs[label]["seconds"], runs[label]["changed_total"], runs[label]["task_results"]),
                    file=sys.stderr, flush=True)
            results[nodes] = runs
        lab("down", nodes=max(sizes))

    print("\nsite.yml on the lab (1 hub + 1 mirror + N GPU nodes; SSH with pipelining; transformers backend)\n")
    print("%-6s %-7s %9s %8s %13s" % ("nodes", "run", "seconds", "changed", "task results"))
    for nodes, runs in results.items():
        for label, data in runs.items():
            print("%-6d %-7s %9.1f %8d %13d" % (nodes, label, data["seconds"], data["changed_total"], data["task_results"]))
    print("\n%-6s %18s %22s %18s" % ("nodes", "no-op / first", "no-op vs smallest", "drift / no-op"))
    base = results[sizes[0]]["noop"]["seconds"]
    for nodes, runs in results.items():
        print("%-6d %17.0f%% %21.2fx %17.2fx" % (nodes, 100 * runs["noop"]["seconds"] / runs["first"]["seconds"],
                                                 runs["noop"]["seconds"] / base,
                                                 runs["drift"]["seconds"] / runs["noop"]["seconds"]))
    print("goals: no-op <= 15% of first; 6 nodes' no-op <= 1.3x one node's; drift repair <= 1.5x the no-op")
    for nodes, runs in results.items():
        for label, data in runs.items():
            print("\nslowest tasks, %d node(s), %s run:" % (nodes, label))
            for task, seconds in data["slowest"][:args.slowest]:
                print("  %7.1fs  %s" % (seconds, task))
    return 0


if __name__ == "__main__":
    sys.exit(main())
