# SPDX-License-Identifier: Apache-2.0
"""Read and write kernel parameters under /proc/sys, and read sysctl.d configuration.

Kept apart from the sysctl_bbr module so that the parsing of sysctl.d files, the knowledge of which
keys live in every network namespace and which only in the initial one, and the classification of
write failures are shared and unit-tested on their own. Standard library only: this runs on targets.
"""
from __future__ import annotations

import errno
import os
import re

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")

# Where a key lives. "per_netns": every network namespace has its own value (a container can set it).
# "initial_netns_only": the key belongs to the whole machine; outside the initial namespace it is
# absent (older kernels, and default_qdisc on every kernel) or shown read-only (rmem_max & co. on 6.x).
SCOPE_PER_NETNS = "per_netns"
SCOPE_INITIAL_ONLY = "initial_netns_only"
SCOPE_UNKNOWN = "unknown"
INITIAL_NETNS_ONLY = frozenset([
    "net.core.default_qdisc",
    "net.core.rmem_max", "net.core.wmem_max", "net.core.rmem_default", "net.core.wmem_default",
    "net.core.optmem_max", "net.core.netdev_max_backlog", "net.core.netdev_budget",
    "net.core.netdev_budget_usecs", "net.core.busy_poll", "net.core.busy_read",
    "net.ipv4.tcp_mem", "net.ipv4.udp_mem",
])
PER_NETNS_PREFIXES = ("net.ipv4.tcp_", "net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv6.")

# Compiled-in defaults of the kernels the collection supports (mainline defaults, which Debian,
# Ubuntu and RHEL kernels keep): what a machine has when no sysctl configuration sets the key.
# tcp_rmem/tcp_wmem maxima are sized by the kernel at boot from memory; these are the values any
# host with more than about 1 GiB of RAM gets.
KERNEL_DEFAULTS = {
    "net.core.default_qdisc": "pfifo_fast",
    "net.ipv4.tcp_congestion_control": "cubic",
    "net.core.rmem_max": "212992",
    "net.core.wmem_max": "212992",
    "net.core.rmem_default": "212992",
    "net.core.wmem_default": "212992",
    "net.core.netdev_max_backlog": "1000",
    "net.ipv4.tcp_rmem": "4096 131072 6291456",
    "net.ipv4.tcp_wmem": "4096 16384 4194304",
    "net.ipv4.tcp_mtu_probing": "0",
    "net.ipv4.tcp_slow_start_after_idle": "1",
    "net.ipv4.tcp_window_scaling": "1",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_sack": "1",
    "net.ipv4.tcp_no_metrics_save": "0",
    "net.ipv4.tcp_notsent_lowat": "4294967295",
}

# Where systemd-sysctl (and procps' `sysctl --system`) read configuration, highest precedence first.
# A file name in an earlier directory hides the same name in later ones; files then apply in name
# order, later assignments winning; /etc/sysctl.conf applies last.
DEFAULT_SEARCH_PATHS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
                        "/lib/sysctl.d", "/etc/sysctl.conf")


def normalize_key(key: str) -> str:
    """'net/ipv4/tcp_rmem' or 'net.ipv4.tcp_rmem' -> 'net.ipv4.tcp_rmem'; ValueError when not a key."""
    dotted = str(key).strip().replace("/", ".")
    if not KEY_RE.match(dotted):
        raise ValueError("'%s' is not a sysctl key (expected dotted names such as net.core.rmem_max)" % key)
    return dotted


def normalize_value(value) -> str:
    """Kernel vectors read back tab-separated ('4096\\t131072\\t6291456'); compare them word by word."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (list, tuple)):
        return " ".join(normalize_value(item) for item in value)
    return " ".join(str(value).split())


def key_path(root: str, key: str) -> str:
    return os.path.join(root, *key.split("."))


def scope_of(key: str) -> str:
    if key in INITIAL_NETNS_ONLY:
        return SCOPE_INITIAL_ONLY
    if key.startswith(PER_NETNS_PREFIXES):
        return SCOPE_PER_NETNS
    return SCOPE_UNKNOWN


def read_key(root: str, key: str):
    """The key's value, normalised, or None when the key does not exist here."""
    try:
        with open(key_path(root, key), encoding="ascii") as handle:
            return normalize_value(handle.read())
    except FileNotFoundError:
        return None


def key_writable(root: str, key: str) -> bool:
    """Whether the kernel shows the key with any write bit: proc hides write access by mode, even from root."""
    return bool(os.stat(key_path(root, key)).st_mode & 0o222)


def is_read_only_mount(root: str) -> bool:
    return bool(os.statvfs(root).f_flag & os.ST_RDONLY)


def in_initial_netns(root: str) -> bool:
    """net.core.default_qdisc exists only in the initial network namespace (since Linux 3.12)."""
    return os.path.exists(key_path(root, "net.core.default_qdisc"))


def write_key(root: str, key: str, value: str):
    """Write one value; None on success, else the OSError the kernel raised (opening or writing)."""
    try:
        fd = os.open(key_path(root, key), os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        exc.stage = "open"
        return exc
    try:
        os.write(fd, (value + "\n").encode("ascii"))
    except OSError as exc:
        exc.stage = "write"
        return exc
    finally:
        os.close(fd)
    return None


def refused_value(exc: OSError) -> bool:
    """The kernel rejected the value itself (unknown qdisc or algorithm, malformed number)."""
    return getattr(exc, "stage", "") == "write" and exc.errno in (errno.EINVAL, errno.ENOENT, errno.ERANGE)


def parse_conf(text: str) -> dict:
    """Assignments in one sysctl.d file; '-' prefixes (ignore failures) dropped, globs skipped."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip().lstrip("-")
        if "*" in key:
            continue
        try:
            values[normalize_key(key)] = normalize_value(value)
        except ValueError:
            continue
    return values


def configured_values(search_paths, exclude: str) -> dict:
    """What booting would set from sysctl configuration, leaving out the file `exclude` (a path)."""
    exclude = os.path.realpath(exclude)
    chosen = {}
    plain_files = []
    for entry in search_paths:
        if os.path.isdir(entry):
            for name in os.listdir(entry):
                if name.endswith(".conf") and name not in chosen:
                    chosen[name] = os.path.join(entry, name)
        elif os.path.isfile(entry):
            plain_files.append(entry)
    values = {}
    for path in [chosen[name] for name in sorted(chosen)] + plain_files:
        if os.path.realpath(path) == exclude:
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                values.update(parse_conf(handle.read()))
        except OSError:
            continue
    return values


def render_conf(header: str, values: dict) -> str:
    lines = ["# " + line if line else "#" for line in header.splitlines()]
    lines += ["%s = %s" % (key, value) for key, value in values.items()]
    return "\n".join(lines) + "\n"
