"""_sysctl: key and value normalisation, sysctl.d parsing and the precedence systemd-sysctl applies."""
from __future__ import annotations

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _sysctl


@pytest.mark.parametrize("raw, expected", [
    ("net.ipv4.tcp_rmem", "net.ipv4.tcp_rmem"),
    ("net/ipv4/tcp_rmem", "net.ipv4.tcp_rmem"),
    (" net.core.rmem_max ", "net.core.rmem_max"),
    ("net.ipv4.conf.eth0-1.rp_filter", "net.ipv4.conf.eth0-1.rp_filter"),
])
def test_keys_are_normalised_to_dots(raw, expected):
    assert _sysctl.normalize_key(raw) == expected


@pytest.mark.parametrize("raw", ["net", "net..core", "../etc/passwd", "net.core.rmem_max=1", "net.*.x", ""])
def test_what_is_not_a_key_is_refused(raw):
    with pytest.raises(ValueError, match="is not a sysctl key"):
        _sysctl.normalize_key(raw)


@pytest.mark.parametrize("raw, expected", [
    ("4096\t131072\t6291456\n", "4096 131072 6291456"),
    ([4096, 131072, 268435456], "4096 131072 268435456"),
    (268435456, "268435456"),
    (True, "1"),
    (" bbr\n", "bbr"),
])
def test_values_compare_word_by_word(raw, expected):
    assert _sysctl.normalize_value(raw) == expected


@pytest.mark.parametrize("key, scope", [
    ("net.core.default_qdisc", _sysctl.SCOPE_INITIAL_ONLY),
    ("net.core.rmem_max", _sysctl.SCOPE_INITIAL_ONLY),
    ("net.ipv4.tcp_mem", _sysctl.SCOPE_INITIAL_ONLY),
    ("net.ipv4.tcp_congestion_control", _sysctl.SCOPE_PER_NETNS),
    ("net.ipv4.tcp_rmem", _sysctl.SCOPE_PER_NETNS),
    ("vm.swappiness", _sysctl.SCOPE_UNKNOWN),
])
def test_scope_of_keys(key, scope):
    assert _sysctl.scope_of(key) == scope


def test_parse_conf_reads_assignments_and_skips_the_rest():
    text = """# comment
; other comment
net.core.default_qdisc=fq_codel
-net.ipv4.conf.all.rp_filter = 2
net.ipv4.conf.*.promote_secondaries = 1
net/ipv4/tcp_rmem = 4096	87380   6291456
not an assignment
"""
    assert _sysctl.parse_conf(text) == {
        "net.core.default_qdisc": "fq_codel",
        "net.ipv4.conf.all.rp_filter": "2",
        "net.ipv4.tcp_rmem": "4096 87380 6291456",
    }


def test_configured_values_follow_systemd_sysctl_precedence(tmp_path):
    etc, vendor = tmp_path / "etc" / "sysctl.d", tmp_path / "usr" / "lib" / "sysctl.d"
    etc.mkdir(parents=True)
    vendor.mkdir(parents=True)
    (vendor / "50-default.conf").write_text("net.core.default_qdisc = fq_codel\nkernel.pid_max = 1\n")
    (vendor / "10-early.conf").write_text("net.ipv4.tcp_mtu_probing = 2\n")
    (vendor / "70-late.conf").write_text("net.ipv4.tcp_mtu_probing = 0\n")   # later name wins
    (etc / "50-default.conf").write_text("kernel.pid_max = 4194304\n")      # hides the vendor file
    (etc / "60-autoglm-network.conf").write_text("net.core.default_qdisc = fq\n")
    sysctl_conf = tmp_path / "etc" / "sysctl.conf"
    sysctl_conf.write_text("vm.swappiness = 10\n")
    values = _sysctl.configured_values([str(etc), str(vendor), str(sysctl_conf), str(tmp_path / "missing")],
                                       exclude=str(etc / "60-autoglm-network.conf"))
    assert values == {"kernel.pid_max": "4194304", "net.ipv4.tcp_mtu_probing": "0", "vm.swappiness": "10"}


def test_render_conf_comments_the_header():
    assert _sysctl.render_conf("one\n\ntwo", {"a.b": "1"}) == "# one\n#\n# two\na.b = 1\n"
