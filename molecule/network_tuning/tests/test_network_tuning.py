"""State on the nodes after the network_tuning scenario: persisted file, runtime values in the node's namespace."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[3] / "roles" / "network_tuning" / "defaults" / "main.yml").read_text())
CONF = "/etc/sysctl.d/60-autoglm-network.conf"
CC = "/proc/sys/net/ipv4/tcp_congestion_control"


def role_args(**extra):
    args = {"congestion_control": "bbr", "qdisc": "fq", "settings": DEFAULTS["network_tuning_sysctl"], "remount_proc_sys": True}
    args.update(extra)
    return args


def sysctl_bbr(host, check, **extra):
    return host.ansible("autoglm.deploy.sysctl_bbr", json.dumps(role_args(**extra)), check=check)


def proc_sys_mount_options(host) -> list:
    for line in host.file("/proc/self/mountinfo").content_string.splitlines():
        fields = line.split()
        if fields[4] == "/proc/sys":
            return fields[5].split(",")
    raise AssertionError("/proc/sys is not a mount point on %s" % host.backend.get_hostname())


def test_everything_is_persisted_in_the_module_own_file(host):
    conf = host.file(CONF)
    assert conf.exists and conf.mode == 0o644 and conf.user == "root"
    lines = [line for line in conf.content_string.splitlines() if not line.startswith("#")]
    assert lines == [
        "net.core.default_qdisc = fq",
        "net.ipv4.tcp_congestion_control = bbr",
        "net.core.rmem_max = 268435456",
        "net.core.wmem_max = 268435456",
        "net.ipv4.tcp_rmem = 4096 131072 268435456",
        "net.ipv4.tcp_wmem = 4096 16384 268435456",
        "net.ipv4.tcp_mtu_probing = 1",
    ]
    sysctl_conf = host.file("/etc/sysctl.conf")
    assert not sysctl_conf.exists or "autoglm" not in sysctl_conf.content_string


def test_buffers_that_belong_to_the_namespace_are_set_at_runtime(host):
    assert host.file("/proc/sys/net/ipv4/tcp_rmem").content_string.split() == ["4096", "131072", "268435456"]
    assert host.file("/proc/sys/net/ipv4/tcp_mtu_probing").content_string.strip() == "1"
    assert "ro" in proc_sys_mount_options(host)  # the role put the read-only mount back


def test_rerun_after_someone_set_reno_restores_bbr_and_reports_changed(host):
    # side_effect.yml set reno at runtime after idempotence.
    assert host.file(CC).content_string.strip() == "reno"
    result = sysctl_bbr(host, check=False)
    assert result["changed"] is True
    keys = result["keys"]
    assert keys["net.ipv4.tcp_congestion_control"] == {
        "desired": "bbr", "before": "reno", "after": "bbr", "scope": "per_netns", "runtime": "applied"}
    assert keys["net.ipv4.tcp_rmem"]["runtime"] == "already"
    assert result["sysctl_file"]["changed"] is False and result["proc_sys"]["remounted"] is True
    assert host.file(CC).content_string.strip() == "bbr"
    assert "ro" in proc_sys_mount_options(host)

    # The node is a container: machine-wide keys are reported, with the reason, never as ok.
    assert result["network_namespace"] == "non_initial"
    qdisc = keys["net.core.default_qdisc"]
    assert qdisc["runtime"] == "not_applicable" and qdisc["before"] is None
    assert "exists only in the initial network namespace" in qdisc["reason"]
    rmem_max = keys["net.core.rmem_max"]
    assert rmem_max["runtime"] == "not_applicable" and "read-only" in rmem_max["reason"]
    assert sorted(result["not_applicable"]) == ["net.core.default_qdisc", "net.core.rmem_max", "net.core.wmem_max"]

    # Now converged: a check-mode rerun predicts no change.
    again = sysctl_bbr(host, check=True)
    assert again["changed"] is False
    assert again["keys"]["net.ipv4.tcp_congestion_control"]["runtime"] == "already"


def test_an_algorithm_outside_the_allowed_list_is_not_applicable_not_a_crash(host):
    allowed = host.file("/proc/sys/net/ipv4/tcp_allowed_congestion_control").content_string.split()
    assert "cubic" not in allowed  # the lab's kernel: reno bbr (LAB.md)
    result = sysctl_bbr(host, check=True, congestion_control="cubic", sysctl_file="61-probe.conf")
    cc = result["keys"]["net.ipv4.tcp_congestion_control"]
    assert cc["runtime"] == "not_applicable" and "tcp_allowed_congestion_control" in cc["reason"]
    assert not host.file("/etc/sysctl.d/61-probe.conf").exists  # check mode
