"""sysctl_bbr against fake /proc/sys trees in tmp_path, run as Ansible runs a module (a subprocess).

What a fake tree cannot do is done for real: a read-only /proc/sys is a read-only bind mount made in a
private mount namespace (`unshare -m`, so nothing leaks to the machine), which gives the module the
kernel's own EROFS and ST_RDONLY, and lets remount_proc_sys run the real `mount`. A key the kernel shows
read-only in a container (net.core.rmem_max outside the initial namespace) is a file without write bits,
which is how proc presents it. The kernel-module load is a script standing in for modprobe (no module
can be loaded here). tests/integration/test_sysctl_bbr_netns.py runs the module against the real kernel
in a throwaway network namespace.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
MODULE = REPO / "plugins" / "modules" / "sysctl_bbr.py"
COLLECTIONS = REPO / "collections"

HOST = {  # the initial namespace of a host with defaults, as Debian 12 boots without tuning
    "net/core/default_qdisc": "pfifo_fast",
    "net/core/rmem_max": "212992",
    "net/core/wmem_max": "212992",
    "net/ipv4/tcp_congestion_control": "cubic",
    "net/ipv4/tcp_available_congestion_control": "reno cubic bbr",
    "net/ipv4/tcp_allowed_congestion_control": "reno cubic",
    "net/ipv4/tcp_rmem": "4096\t131072\t6291456",
    "net/ipv4/tcp_wmem": "4096\t16384\t4194304",
}
BUFFERS = {"net.core.rmem_max": 268435456, "net.ipv4.tcp_rmem": [4096, 131072, 268435456]}


class Machine:
    """A fake root: proc/sys, etc/sysctl.d, etc/modules-load.d, usr/lib/sysctl.d under tmp_path."""

    def __init__(self, base: Path, values: dict | None = None, container: bool = False):
        self.base = base
        self.proc_sys = base / "proc" / "sys"
        self.sysctl_d = base / "etc" / "sysctl.d"
        self.modules_d = base / "etc" / "modules-load.d"
        self.vendor_d = base / "usr" / "lib" / "sysctl.d"
        values = dict(HOST if values is None else values)
        if container:  # a non-initial network namespace, as a node of the lab shows it
            del values["net/core/default_qdisc"]
            values["net/ipv4/tcp_allowed_congestion_control"] = "reno bbr"
            values["net/ipv4/tcp_congestion_control"] = "bbr"
        for key, value in values.items():
            path = self.proc_sys / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
        if container:
            for key in ("net/core/rmem_max", "net/core/wmem_max"):
                (self.proc_sys / key).chmod(0o444)

    def args(self, **extra) -> dict:
        args = dict(proc_sys_root=str(self.proc_sys), sysctl_d_dir=str(self.sysctl_d),
                    modules_load_d_dir=str(self.modules_d),
                    sysctl_search_paths=[str(self.sysctl_d), str(self.vendor_d)])
        args.update(extra)
        return args

    def value(self, key: str) -> str:
        return (self.proc_sys / key.replace(".", "/")).read_text().strip()

    def conf(self):
        path = self.sysctl_d / "60-autoglm-network.conf"
        return path.read_text() if path.exists() else None

    def snapshot(self) -> dict:
        return {str(path): (path.read_bytes(), path.stat().st_mtime_ns)
                for path in sorted(self.base.rglob("*")) if path.is_file() and path.name != "args.json"}


def run(args: dict, check_mode: bool = False, diff: bool = False, wrap: str = "") -> dict:
    """Run the module; `wrap` is a shell prefix around the python command (`$MODULE_CMD`)."""
    args_file = Path(args["proc_sys_root"]).parents[1] / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)}))
    command = "%s %s %s" % (shlex.quote(sys.executable), shlex.quote(str(MODULE)), shlex.quote(str(args_file)))
    argv = ["sh", "-c", wrap.replace("$MODULE_CMD", command)] if wrap else shlex.split(command)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError("no JSON (rc=%s)\nstdout: %s\nstderr: %s" % (proc.returncode, proc.stdout, proc.stderr)) from exc
    result["_stderr"] = proc.stderr
    return result


def runtime(result: dict) -> dict:
    return {key: entry["runtime"] for key, entry in result["keys"].items()}


def test_host_that_needs_everything_set_gets_it_applied_and_persisted(tmp_path):
    machine = Machine(tmp_path)
    result = run(machine.args(settings=BUFFERS))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True and result["network_namespace"] == "initial"
    assert runtime(result) == {"net.core.default_qdisc": "applied", "net.ipv4.tcp_congestion_control": "applied",
                               "net.core.rmem_max": "applied", "net.ipv4.tcp_rmem": "applied"}
    assert result["keys"]["net.ipv4.tcp_congestion_control"] == {
        "desired": "bbr", "before": "cubic", "after": "bbr", "scope": "per_netns", "runtime": "applied"}
    assert result["keys"]["net.ipv4.tcp_rmem"]["before"] == "4096 131072 6291456"
    assert machine.value("net.core.default_qdisc") == "fq"
    assert machine.value("net.ipv4.tcp_congestion_control") == "bbr"
    assert machine.value("net.ipv4.tcp_rmem") == "4096 131072 268435456"
    conf = machine.conf()
    assert conf.startswith("# Managed by autoglm.deploy.sysctl_bbr")
    assert [line for line in conf.splitlines() if not line.startswith("#")] == [
        "net.core.default_qdisc = fq", "net.ipv4.tcp_congestion_control = bbr",
        "net.core.rmem_max = 268435456", "net.ipv4.tcp_rmem = 4096 131072 268435456"]
    assert (machine.sysctl_d / "60-autoglm-network.conf").stat().st_mode & 0o777 == 0o644
    assert result["sysctl_file"] == {"path": str(machine.sysctl_d / "60-autoglm-network.conf"), "state": "present", "changed": True}
    assert result["not_applicable"] == [] and not result.get("warnings")
    # bbr is built in here (no /proc/modules entry): no modules-load.d file.
    assert result["kernel_module"]["persisted"] is False and not machine.modules_d.exists()


def test_host_already_set_reports_already_and_no_change(tmp_path):
    machine = Machine(tmp_path)
    assert run(machine.args(settings=BUFFERS))["changed"] is True
    before = machine.snapshot()
    result = run(machine.args(settings=BUFFERS))
    assert result["changed"] is False
    assert set(runtime(result).values()) == {"already"}
    assert result["sysctl_file"]["changed"] is False
    assert machine.snapshot() == before


def test_file_edited_by_hand_is_rewritten_while_runtime_is_already_right(tmp_path):
    machine = Machine(tmp_path)
    run(machine.args())
    (machine.sysctl_d / "60-autoglm-network.conf").write_text("net.ipv4.tcp_congestion_control = cubic\n")
    result = run(machine.args())
    assert result["changed"] is True and result["sysctl_file"]["changed"] is True
    assert set(runtime(result).values()) == {"already"}
    assert "net.ipv4.tcp_congestion_control = bbr" in machine.conf()


def test_algorithm_missing_and_module_load_fails_names_the_kernel(tmp_path):
    machine = Machine(tmp_path, dict(HOST, **{"net/ipv4/tcp_available_congestion_control": "reno cubic"}))
    modprobe = tmp_path / "modprobe"
    modprobe.write_text("#!/bin/sh\necho \"modprobe: FATAL: Module $1 not found in directory /lib/modules/$(uname -r)\" >&2\nexit 1\n")
    modprobe.chmod(0o755)
    before = machine.snapshot()
    result = run(machine.args(modprobe_path=str(modprobe)))
    assert result["failed"] is True
    release = os.uname().release
    assert "TCP congestion control 'bbr' is not offered by kernel %s (offered: reno cubic)" % release in result["msg"]
    assert "modprobe: FATAL: Module tcp_bbr not found" in result["msg"]
    assert "CONFIG_TCP_CONG_BBR" in result["msg"] and result["kernel_release"] == release
    assert machine.snapshot() == before  # nothing applied, nothing persisted


def test_algorithm_missing_with_load_module_off_says_what_to_do(tmp_path):
    machine = Machine(tmp_path, dict(HOST, **{"net/ipv4/tcp_available_congestion_control": "reno cubic"}))
    result = run(machine.args(load_module=False))
    assert result["failed"] is True and "load_module is false" in result["msg"] and "choose one of: reno cubic" in result["msg"]


def fake_modprobe(tmp_path: Path, machine: Machine) -> Path:
    """Stands in for modprobe: what loading tcp_bbr does to the kernel is that bbr becomes offered."""
    script = tmp_path / "modprobe"
    script.write_text("#!/bin/sh\necho \"$@\" >> %s/modprobe.log\necho 'reno cubic bbr' > %s\n"
                      % (tmp_path, machine.proc_sys / "net/ipv4/tcp_available_congestion_control"))
    script.chmod(0o755)
    return script


def test_algorithm_missing_is_loaded_and_the_module_persisted(tmp_path):
    machine = Machine(tmp_path, dict(HOST, **{"net/ipv4/tcp_available_congestion_control": "reno cubic"}))
    modprobe = fake_modprobe(tmp_path, machine)
    checked = run(machine.args(modprobe_path=str(modprobe)), check_mode=True)
    assert checked["changed"] is True and checked["kernel_module"]["loaded"] is True
    assert not (tmp_path / "modprobe.log").exists()  # check mode loads nothing
    result = run(machine.args(modprobe_path=str(modprobe)))
    assert (tmp_path / "modprobe.log").read_text() == "tcp_bbr\n"
    assert result["kernel_module"] == {"name": "tcp_bbr", "loaded": True, "persisted": True, "changed": True,
                                       "path": str(machine.modules_d / "autoglm-network.conf")}
    assert (machine.modules_d / "autoglm-network.conf").read_text().splitlines()[-1] == "tcp_bbr"
    assert result["keys"]["net.ipv4.tcp_congestion_control"]["runtime"] == "applied"
    again = run(machine.args(modprobe_path=str(modprobe)))
    assert again["changed"] is False and again["kernel_module"]["persisted"] is True
    assert (tmp_path / "modprobe.log").read_text() == "tcp_bbr\n"  # not loaded twice


def test_algorithm_loaded_as_a_module_is_listed_for_the_next_boot(tmp_path):
    machine = Machine(tmp_path)
    (tmp_path / "proc" / "modules").write_text("tcp_bbr 20480 3 - Live 0x0000000000000000\n")
    result = run(machine.args())
    assert result["kernel_module"]["loaded"] is False and result["kernel_module"]["persisted"] is True
    assert "tcp_bbr" in (machine.modules_d / "autoglm-network.conf").read_text()


def test_container_applies_what_its_namespace_allows_and_reports_the_rest(tmp_path):
    machine = Machine(tmp_path, container=True)
    (machine.proc_sys / "net/ipv4/tcp_congestion_control").write_text("reno\n")
    result = run(machine.args(settings=BUFFERS))
    assert result.get("failed") is not True
    assert result["network_namespace"] == "non_initial" and result["changed"] is True
    assert runtime(result) == {"net.core.default_qdisc": "not_applicable", "net.ipv4.tcp_congestion_control": "applied",
                               "net.core.rmem_max": "not_applicable", "net.ipv4.tcp_rmem": "applied"}
    qdisc = result["keys"]["net.core.default_qdisc"]
    assert qdisc["before"] is None and qdisc["after"] is None and qdisc["scope"] == "initial_netns_only"
    assert "exists only in the initial network namespace" in qdisc["reason"]
    rmem_max = result["keys"]["net.core.rmem_max"]
    assert rmem_max["before"] == "212992" and rmem_max["after"] == "212992"
    assert "read-only" in rmem_max["reason"] and "initial network namespace" in rmem_max["reason"]
    assert machine.value("net.core.rmem_max") == "212992"
    assert sorted(result["not_applicable"]) == ["net.core.default_qdisc", "net.core.rmem_max"]
    assert "net.core.default_qdisc = fq" in machine.conf() and "net.core.rmem_max = 268435456" in machine.conf()
    assert any("net.core.default_qdisc" in str(warning) for warning in result["warnings"])
    again = run(machine.args(settings=BUFFERS))
    assert again["changed"] is False and runtime(again)["net.ipv4.tcp_congestion_control"] == "already"


def test_container_with_fail_on_not_applicable_fails_after_persisting(tmp_path):
    machine = Machine(tmp_path, container=True)
    result = run(machine.args(fail_on_not_applicable=True))
    assert result["failed"] is True and result["msg"].startswith("Runtime values not set on this host")
    assert "net.core.default_qdisc" in result["msg"] and machine.conf() is not None


def test_algorithm_outside_the_namespace_allowed_list_is_not_applicable(tmp_path):
    machine = Machine(tmp_path, container=True)
    result = run(machine.args(congestion_control="cubic"))
    entry = result["keys"]["net.ipv4.tcp_congestion_control"]
    assert entry["runtime"] == "not_applicable" and entry["after"] == "bbr"
    assert "tcp_allowed_congestion_control (reno bbr), and 'cubic' is not" in entry["reason"]
    assert machine.value("net.ipv4.tcp_congestion_control") == "bbr"


READ_ONLY = ("mount --bind {t} {t} && mount -o remount,bind,ro {t} && $MODULE_CMD; "
             "if (echo x > {t}/probe) 2>/dev/null; then echo AFTER=rw >&2; else echo AFTER=ro >&2; fi")


def test_read_only_proc_sys_is_reported_per_key_and_still_persisted(tmp_path):
    machine = Machine(tmp_path)
    wrap = "unshare -m --propagation private sh -c %s" % shlex.quote(READ_ONLY.format(t=machine.proc_sys))
    result = run(machine.args(), wrap=wrap)
    assert result.get("failed") is not True, result.get("msg", result["_stderr"])
    assert result["proc_sys"] == {"root": str(machine.proc_sys), "read_only": True, "remounted": False}
    assert set(runtime(result).values()) == {"not_applicable"}
    for entry in result["keys"].values():
        assert "is mounted read-only" in entry["reason"] and "remount_proc_sys" in entry["reason"]
    assert machine.value("net.ipv4.tcp_congestion_control") == "cubic"
    assert machine.conf() is not None and result["changed"] is True  # the file is still persisted


def test_read_only_proc_sys_is_remounted_for_the_writes_and_made_read_only_again(tmp_path):
    machine = Machine(tmp_path)
    wrap = "unshare -m --propagation private sh -c %s" % shlex.quote(READ_ONLY.format(t=machine.proc_sys))
    result = run(machine.args(remount_proc_sys=True), wrap=wrap)
    assert result["proc_sys"]["remounted"] is True
    assert set(runtime(result).values()) == {"applied"}
    assert machine.value("net.ipv4.tcp_congestion_control") == "bbr"
    assert "AFTER=ro" in result["_stderr"]


def test_remount_that_fails_is_reported_with_the_mount_error(tmp_path):
    machine = Machine(tmp_path)
    # The read-only mount is the parent, so proc/sys itself is no mount point to remount.
    parent = machine.proc_sys.parent
    script = f"mount --bind {parent} {parent} && mount -o remount,bind,ro {parent} && $MODULE_CMD"
    result = run(machine.args(remount_proc_sys=True), wrap="unshare -m --propagation private sh -c %s" % shlex.quote(script))
    assert set(runtime(result).values()) == {"not_applicable"}
    reason = result["keys"]["net.ipv4.tcp_congestion_control"]["reason"]
    assert "mount -o remount,bind,rw %s` failed" % machine.proc_sys in reason


def test_state_absent_removes_the_files_and_restores_what_the_host_boots_with(tmp_path):
    machine = Machine(tmp_path)
    (tmp_path / "proc" / "modules").write_text("tcp_bbr 20480 3 - Live 0x0000000000000000\n")
    run(machine.args(settings=dict(BUFFERS, **{"net.ipv4.tcp_wmem": "4096 16384 268435456"})))
    machine.vendor_d.mkdir(parents=True)
    # systemd's vendor file sets fq_codel; a local file of the same name would hide it.
    (machine.vendor_d / "50-default.conf").write_text("-net.ipv4.conf.all.rp_filter = 2\nnet.core.default_qdisc = fq_codel\n")
    args = machine.args(state="absent", restore_values={"net.core.rmem_max": 4194304})
    checked = run(args, check_mode=True)
    assert checked["changed"] is True and machine.conf() is not None
    result = run(args)
    assert result["changed"] is True
    assert {key: entry["after"] for key, entry in result["keys"].items()} == {
        "net.core.default_qdisc": "fq_codel",                # other sysctl configuration
        "net.ipv4.tcp_congestion_control": "cubic",          # kernel default
        "net.core.rmem_max": "4194304",                      # restore_values
        "net.ipv4.tcp_rmem": "4096 131072 6291456",          # kernel default
        "net.ipv4.tcp_wmem": "4096 16384 4194304",           # only in the persisted file: restored too
    }
    assert set(runtime(result).values()) == {"applied"}
    assert machine.conf() is None and not (machine.modules_d / "autoglm-network.conf").exists()
    assert result["sysctl_file"] == {"path": str(machine.sysctl_d / "60-autoglm-network.conf"), "state": "absent", "changed": True}
    again = run(args)
    assert again["changed"] is False and set(runtime(again).values()) == {"already"}


def test_state_absent_in_a_container_reports_what_it_cannot_restore(tmp_path):
    machine = Machine(tmp_path, container=True)
    run(machine.args())
    result = run(machine.args(state="absent"))
    cc = result["keys"]["net.ipv4.tcp_congestion_control"]
    assert cc["desired"] == "cubic" and cc["runtime"] == "not_applicable" and "tcp_allowed_congestion_control" in cc["reason"]
    assert machine.conf() is None and result["changed"] is True
    assert any("not restored" in str(warning) for warning in result["warnings"])


def test_unknown_key_without_a_default_is_left_alone_on_absent(tmp_path):
    machine = Machine(tmp_path, dict(HOST, **{"net/ipv4/tcp_fastopen": "1"}))
    run(machine.args(settings={"net.ipv4.tcp_fastopen": 3}))
    result = run(machine.args(state="absent"))
    entry = result["keys"]["net.ipv4.tcp_fastopen"]
    assert entry["runtime"] == "not_applicable" and "restore_values" in entry["reason"]
    assert machine.value("net.ipv4.tcp_fastopen") == "3"


def test_check_mode_writes_nothing_and_predicts(tmp_path):
    machine = Machine(tmp_path)
    before = machine.snapshot()
    result = run(machine.args(settings=BUFFERS), check_mode=True)
    assert result["changed"] is True
    assert set(runtime(result).values()) == {"would_apply"}
    assert result["keys"]["net.ipv4.tcp_congestion_control"]["after"] == "bbr"
    assert result["sysctl_file"]["changed"] is True
    assert machine.snapshot() == before and not machine.sysctl_d.exists()


def test_diff_shows_file_content_and_runtime_values(tmp_path):
    machine = Machine(tmp_path)
    result = run(machine.args(), check_mode=True, diff=True)
    file_diff, runtime_diff = result["diff"]
    assert file_diff["before"] == "" and "net.ipv4.tcp_congestion_control = bbr" in file_diff["after"]
    assert file_diff["after_header"].endswith("60-autoglm-network.conf")
    assert runtime_diff["before"] == "net.core.default_qdisc = pfifo_fast\nnet.ipv4.tcp_congestion_control = cubic\n"
    assert runtime_diff["after"] == "net.core.default_qdisc = fq\nnet.ipv4.tcp_congestion_control = bbr\n"
    run(machine.args())
    assert run(machine.args(), diff=True)["diff"] == []


@pytest.mark.parametrize("extra, expected", [
    ({"settings": {"net.ipv4.tcp_congestion_control": "bbr"}}, "set by the 'congestion_control' option"),
    ({"settings": {"net..core": 1}}, "'net..core' is not a sysctl key"),
    ({"settings": {"net.core.rmem_max": ""}}, "net.core.rmem_max has no value"),
    ({"qdisc": "fq; reboot"}, "qdisc 'fq; reboot' is not a kernel name"),
    ({"sysctl_file": "../sysctl.conf"}, "sysctl_file '../sysctl.conf' must be a plain file name"),
])
def test_bad_input_is_refused_naming_it(tmp_path, extra, expected):
    machine = Machine(tmp_path)
    before = machine.snapshot()
    result = run(machine.args(**extra))
    assert result["failed"] is True and expected in result["msg"]
    assert machine.snapshot() == before
