"""sysctl_bbr against the real kernel, in a throwaway network namespace (`unshare -n`).

A new network namespace is what a container is to this module: the kernel itself hides
net.core.default_qdisc, shows net.core.rmem_max read-only and refuses algorithms outside
tcp_allowed_congestion_control. Everything the module writes lands in that namespace, which
disappears with the process, so the machine's own settings are never touched.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins" / "modules" / "sysctl_bbr.py"


def run_in_new_netns(tmp_path: Path, args: dict, before: str = "", check_mode: bool = False) -> dict:
    args = dict(args, sysctl_d_dir=str(tmp_path / "sysctl.d"), modules_load_d_dir=str(tmp_path / "modules-load.d"),
                sysctl_search_paths=[str(tmp_path / "sysctl.d")], load_module=False,
                _ansible_check_mode=check_mode)
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    script = "%s%s %s %s" % (before, shlex.quote(sys.executable), shlex.quote(str(MODULE)), shlex.quote(str(args_file)))
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "collections")), check=False)
    assert proc.stdout.strip(), "no result (rc=%s): %s" % (proc.returncode, proc.stderr)
    return json.loads(proc.stdout)


def test_new_namespace_gets_bbr_and_reports_machine_wide_keys(tmp_path):
    settings = {"net.core.rmem_max": 268435456, "net.ipv4.tcp_rmem": "4096 131072 268435456"}
    result = run_in_new_netns(tmp_path, {"settings": settings},
                              before="echo reno > /proc/sys/net/ipv4/tcp_congestion_control && ")
    assert result.get("failed") is not True, result.get("msg")
    assert result["network_namespace"] == "non_initial"
    keys = result["keys"]
    assert keys["net.ipv4.tcp_congestion_control"]["before"] == "reno"
    assert keys["net.ipv4.tcp_congestion_control"]["after"] == "bbr"
    assert keys["net.ipv4.tcp_congestion_control"]["runtime"] == "applied"
    assert keys["net.ipv4.tcp_rmem"]["runtime"] == "applied" and keys["net.ipv4.tcp_rmem"]["after"] == "4096 131072 268435456"
    assert keys["net.core.default_qdisc"]["runtime"] == "not_applicable" and keys["net.core.default_qdisc"]["before"] is None
    rmem_max = keys["net.core.rmem_max"]
    assert rmem_max["runtime"] == "not_applicable" and "read-only" in rmem_max["reason"]
    assert "net.core.rmem_max = 268435456" in (tmp_path / "sysctl.d" / "60-autoglm-network.conf").read_text()


def test_kernel_refuses_algorithms_outside_the_allowed_list(tmp_path):
    allowed = subprocess.run(["unshare", "-n", "cat", "/proc/sys/net/ipv4/tcp_allowed_congestion_control"],
                             capture_output=True, text=True, check=True).stdout.split()
    refused = subprocess.run(["unshare", "-n", "sh", "-c", "echo cubic > /proc/sys/net/ipv4/tcp_congestion_control"],
                             capture_output=True, text=True, check=False)
    assert "cubic" not in allowed and refused.returncode != 0  # the kernel's rule the module predicts
    result = run_in_new_netns(tmp_path, {"congestion_control": "cubic"})
    entry = result["keys"]["net.ipv4.tcp_congestion_control"]
    assert entry["runtime"] == "not_applicable" and "tcp_allowed_congestion_control" in entry["reason"]


def test_a_value_the_kernel_rejects_fails_and_is_not_persisted(tmp_path):
    result = run_in_new_netns(tmp_path, {"settings": {"net.ipv4.tcp_rmem": "lots of memory"}},
                              before="echo reno > /proc/sys/net/ipv4/tcp_congestion_control && ")
    assert result["failed"] is True
    assert "refused net.ipv4.tcp_rmem = 'lots of memory' (Invalid argument)" in result["msg"]
    assert not (tmp_path / "sysctl.d" / "60-autoglm-network.conf").exists()
