#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sysctl_bbr
short_description: BBR congestion control, the fq qdisc and socket buffers - at runtime and persisted, namespace-aware
version_added: "0.1.0"
description:
  - Sets C(net.core.default_qdisc) and C(net.ipv4.tcp_congestion_control), plus any other kernel
    parameters given in O(settings) (socket buffers such as C(net.core.rmem_max) or C(net.ipv4.tcp_rmem)),
    at runtime by writing under O(proc_sys_root), and persists them in a file of its own in
    O(sysctl_d_dir) (never C(/etc/sysctl.conf)), so that the next boot sets the same values.
  - Runtime and persistence are reported separately. For each key the result says what the value was
    before and after, and whether the runtime value was C(applied), C(already) right, C(would_apply)
    (check mode) or C(not_applicable) here, with the reason.
  - Checks that the congestion control algorithm is offered by the kernel
    (C(net.ipv4.tcp_available_congestion_control)). When it is not, loads C(tcp_<algorithm>) with
    modprobe and lists it in a file of its own in O(modules_load_d_dir); when that is impossible it
    fails naming the kernel release and the algorithms the kernel does offer.
    When the algorithm is already a loaded kernel module (listed in C(/proc/modules)) that file is written too,
    so the next boot offers it before C(systemd-sysctl) runs.
  - Network namespaces. Some keys belong to each network namespace (C(net.ipv4.tcp_congestion_control),
    C(net.ipv4.tcp_rmem), C(net.ipv4.tcp_wmem)); others exist only in the initial one, which is the
    machine's (C(net.core.default_qdisc) is absent elsewhere, C(net.core.rmem_max) and C(wmem_max) are
    absent or read-only elsewhere). A non-initial namespace may only choose congestion control
    algorithms listed in C(net.ipv4.tcp_allowed_congestion_control). Inside a container the module
    applies what the namespace allows, persists everything, and reports each other key as
    C(not_applicable) with the reason, and a warning; the task does not fail unless
    O(fail_on_not_applicable) is set.
  - Containers usually mount /proc/sys read-only. Keys that need writing are then C(not_applicable)
    unless O(remount_proc_sys) is set, in which case the module remounts that mount read-write for
    its writes and read-only again afterwards (this needs CAP_SYS_ADMIN).
  - O(state=absent) removes both files and puts the runtime values back to what the host would have
    after a reboot without them, per key in this order. 1. O(restore_values), when it names the key.
    2. The value other sysctl configuration sets (O(sysctl_search_paths), for example
    systemd's C(50-default.conf) sets C(net.core.default_qdisc=fq_codel) on most distributions).
    3. The kernel's compiled-in default, C(pfifo_fast) for the qdisc, C(cubic) for congestion control,
    C(212992) for C(rmem_max) and C(wmem_max), C(4096 131072 6291456) for C(tcp_rmem) and
    C(4096 16384 4194304) for C(tcp_wmem) (mainline defaults that Debian, Ubuntu and RHEL kernels keep).
    A key with none of these keeps its runtime value until reboot and is reported C(not_applicable).
    A loaded kernel module is not unloaded.
  - C(net.core.default_qdisc) applies to interfaces that are set up after it changes; at boot
    C(systemd-sysctl) runs before the network, so the persisted value covers every interface. BBR
    paces by itself when the qdisc is not fq (Linux 4.13 and later).
options:
  state:
    description: C(present) applies and persists; C(absent) removes the module's files and restores the runtime values.
    type: str
    default: present
    choices: [present, absent]
  congestion_control:
    description: TCP congestion control algorithm (C(net.ipv4.tcp_congestion_control)).
    type: str
    default: bbr
  qdisc:
    description: Default queueing discipline for new interfaces (C(net.core.default_qdisc)).
    type: str
    default: fq
  settings:
    description:
      - Further kernel parameters as a mapping of key (dotted, for example C(net.ipv4.tcp_rmem)) to value.
        A value may be a number, a string, or a list (written space-separated, for C(tcp_rmem)-like vectors).
      - The two keys set by O(qdisc) and O(congestion_control) are refused here.
    type: dict
    default: {}
  sysctl_file:
    description: Name of the module's file in O(sysctl_d_dir).
    type: str
    default: 60-autoglm-network.conf
  modules_load_file:
    description: Name of the module's file in O(modules_load_d_dir), written when the algorithm comes from a kernel module.
    type: str
    default: autoglm-network.conf
  load_module:
    description: Load C(tcp_<congestion_control>) with modprobe when the kernel does not offer the algorithm.
    type: bool
    default: true
  modprobe_path:
    description: modprobe to run; looked up in PATH when unset.
    type: path
  remount_proc_sys:
    description:
      - When O(proc_sys_root) is a read-only mount and a key needs writing, remount it read-write for the
        writes and read-only again afterwards (C(mount -o remount,bind,rw|ro); needs CAP_SYS_ADMIN).
      - Off by default, so a read-only /proc/sys is reported, not changed.
    type: bool
    default: false
  fail_on_not_applicable:
    description: Fail the task (after persisting) when any runtime value could not be set here.
    type: bool
    default: false
  restore_values:
    description: For O(state=absent), runtime values to put back by key; they take precedence over the derived defaults.
    type: dict
    default: {}
  proc_sys_root:
    description: Where the kernel parameters are read and written. Change it only for tests or to point at a fake tree.
    type: path
    default: /proc/sys
  sysctl_d_dir:
    description: Directory of the persisted file. Change it for tests or to configure a chroot.
    type: path
    default: /etc/sysctl.d
  modules_load_d_dir:
    description: Directory of the kernel module list. Change it for tests or to configure a chroot.
    type: path
    default: /etc/modules-load.d
  sysctl_search_paths:
    description:
      - sysctl configuration that O(state=absent) reads to find what the host sets without the module's file,
        directories (their C(*.conf) files, by systemd-sysctl precedence) and plain files (applied last).
      - Unset, the standard locations are used with O(sysctl_d_dir) in place of C(/etc/sysctl.d).
    type: list
    elements: path
attributes:
  check_mode:
    support: full
    description: Reads everything, writes nothing, loads nothing; runtime statuses read C(would_apply).
  diff_mode:
    support: full
    description: The persisted file, the module list file and the runtime values, before and after.
notes:
  - The runtime status of each key is the kernel's answer, read back after writing, not an assumption.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: BBR with fq and buffers sized for multi-GB downloads
  autoglm.deploy.sysctl_bbr:
    settings:
      net.core.rmem_max: 268435456
      net.core.wmem_max: 268435456
      net.ipv4.tcp_rmem: [4096, 131072, 268435456]
      net.ipv4.tcp_wmem: "4096 16384 268435456"

- name: Same inside a container whose /proc/sys is mounted read-only
  autoglm.deploy.sysctl_bbr:
    remount_proc_sys: true

- name: Remove the tuning and restore what the host would boot with
  autoglm.deploy.sysctl_bbr:
    state: absent
"""

RETURN = r"""
keys:
  description: One entry per key, by key name.
  returned: always
  type: dict
  sample:
    net.ipv4.tcp_congestion_control:
      desired: bbr
      before: reno
      after: bbr
      scope: per_netns
      runtime: applied
    net.core.default_qdisc:
      desired: fq
      before: null
      after: null
      scope: initial_netns_only
      runtime: not_applicable
      reason: exists only in the initial network namespace ...
  contains:
    desired: {description: Value the key should have (set or restored)., type: str}
    before: {description: Runtime value before the task; null when the key does not exist here., type: str}
    after: {description: 'Runtime value after the task, read back from the kernel (in check mode, the predicted value).', type: str}
    scope: {description: 'C(per_netns), C(initial_netns_only) or C(unknown).', type: str}
    runtime: {description: 'C(applied), C(already), C(would_apply) (check mode) or C(not_applicable).', type: str}
    reason: {description: Why the runtime value could not be set; only with C(not_applicable)., type: str}
not_applicable:
  description: Keys whose runtime value could not be set here.
  returned: always
  type: list
  elements: str
sysctl_file:
  description: The persisted file.
  returned: always
  type: dict
  contains:
    path: {description: Its path., type: str}
    state: {description: C(present) or C(absent) after the task., type: str}
    changed: {description: Whether it was (or in check mode would be) written or removed., type: bool}
kernel_module:
  description: The congestion control algorithm's kernel module.
  returned: always
  type: dict
  contains:
    name: {description: Module name (C(tcp_<algorithm>))., type: str}
    loaded: {description: Whether this task loaded it (check mode - would load)., type: bool}
    path: {description: The modules-load.d file., type: str}
    persisted: {description: Whether that file lists the module after the task., type: bool}
    changed: {description: Whether that file was (or would be) written or removed., type: bool}
network_namespace:
  description: C(initial) (the machine's own) or C(non_initial) (a container, judged by net.core.default_qdisc being absent).
  returned: always
  type: str
proc_sys:
  description: The parameter tree.
  returned: always
  type: dict
  contains:
    root: {description: O(proc_sys_root)., type: str}
    read_only: {description: Whether it was mounted read-only when the task started., type: bool}
    remounted: {description: Whether the task remounted it read-write for its writes (and back)., type: bool}
kernel_release:
  description: The running kernel (uname -r).
  returned: always
  type: str
"""

import errno
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.autoglm.deploy.plugins.module_utils import _sysctl

QDISC_KEY = "net.core.default_qdisc"
CC_KEY = "net.ipv4.tcp_congestion_control"
AVAILABLE_KEY = "net.ipv4.tcp_available_congestion_control"
ALLOWED_KEY = "net.ipv4.tcp_allowed_congestion_control"
NAME_RE = re.compile(r"^[a-z0-9_]+$")
FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+\.conf$")
HEADER = ("Managed by autoglm.deploy.sysctl_bbr (role network_tuning); edits here are overwritten.\n"
          "Congestion control, default qdisc and socket buffers for large downloads.")
MODULES_HEADER = "# Managed by autoglm.deploy.sysctl_bbr: the congestion control algorithm's kernel module.\n"


def read_text(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class NetworkTuning:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.params = module.params
        self.root = self.params["proc_sys_root"]
        self.release = os.uname().release
        self.sysctl_path = os.path.join(self.params["sysctl_d_dir"], self.params["sysctl_file"])
        self.modules_path = os.path.join(self.params["modules_load_d_dir"], self.params["modules_load_file"])
        self.initial_netns = _sysctl.in_initial_netns(self.root)
        self.read_only = _sysctl.is_read_only_mount(self.root)
        self.remounted = False
        self.loaded = False
        self.changed = False
        self.diffs = []

    # ---- input
    def fail(self, msg: str, **extra):
        self.module.fail_json(msg=msg, kernel_release=self.release, **extra)

    def desired_values(self) -> dict:
        for option in ("qdisc", "congestion_control"):
            if not NAME_RE.match(self.params[option]):
                self.fail("%s '%s' is not a kernel name (lower-case letters, digits, underscores)" % (option, self.params[option]))
        for option in ("sysctl_file", "modules_load_file"):
            if not FILE_RE.match(self.params[option]):
                self.fail("%s '%s' must be a plain file name ending in .conf" % (option, self.params[option]))
        desired = {QDISC_KEY: self.params["qdisc"], CC_KEY: self.params["congestion_control"]}
        for raw, value in (self.params["settings"] or {}).items():
            try:
                key = _sysctl.normalize_key(raw)
            except ValueError as exc:
                self.fail("settings: %s" % exc)
            if key in desired:
                self.fail("settings: %s is set by the '%s' option; remove it from settings"
                          % (key, "qdisc" if key == QDISC_KEY else "congestion_control"))
            if value is None or _sysctl.normalize_value(value) == "":
                self.fail("settings: %s has no value" % key)
            desired[key] = _sysctl.normalize_value(value)
        return desired

    # ---- kernel module for the algorithm
    def module_listed(self, name: str) -> bool:
        text = read_text(os.path.join(os.path.dirname(self.root.rstrip("/")), "modules")) or ""
        return any(line.split()[0] == name for line in text.splitlines() if line.strip())

    def ensure_algorithm(self, algorithm: str) -> dict:
        name = "tcp_" + algorithm
        info = {"name": name, "loaded": False, "path": self.modules_path, "persisted": False, "changed": False}
        available = (_sysctl.read_key(self.root, AVAILABLE_KEY) or "").split()
        if available and algorithm not in available:
            offered = " ".join(available)
            if not self.params["load_module"]:
                self.fail("TCP congestion control '%s' is not offered by kernel %s (offered: %s) and load_module is false: "
                          "set load_module=true, load %s yourself, or choose one of: %s" % (algorithm, self.release, offered, name, offered))
            if self.module.check_mode:
                info["loaded"] = True
            else:
                self.load(name, algorithm, offered)
                info["loaded"] = True
        existing = read_text(self.modules_path)
        wanted = algorithm != "reno" and (info["loaded"] or self.module_listed(name) or existing is not None)
        content = MODULES_HEADER + name + "\n" if wanted else None
        info["persisted"] = wanted
        info["changed"] = self.converge_file(self.modules_path, existing, content)
        return info

    def load(self, name: str, algorithm: str, offered: str):
        modprobe = self.params["modprobe_path"] or self.module.get_bin_path("modprobe")
        advice = ("use a kernel built with CONFIG_TCP_CONG_%s (as a module or built in), or choose one of: %s"
                  % (algorithm.upper(), offered))
        if not modprobe:
            self.fail("TCP congestion control '%s' is not offered by kernel %s (offered: %s) and there is no modprobe "
                      "to load %s: %s" % (algorithm, self.release, offered, name, advice))
        rc, out, err = self.module.run_command([modprobe, name], environ_update={"LC_ALL": "C"})
        if rc != 0:
            self.fail("TCP congestion control '%s' is not offered by kernel %s (offered: %s) and `%s %s` failed (rc=%d): %s. %s"
                      % (algorithm, self.release, offered, modprobe, name, rc, (err or out).strip(), advice[0].upper() + advice[1:]))
        self.loaded = True
        self.changed = True
        now = (_sysctl.read_key(self.root, AVAILABLE_KEY) or "").split()
        if algorithm not in now:
            self.fail("`%s %s` succeeded but kernel %s still does not offer '%s' (offered: %s)"
                      % (modprobe, name, self.release, algorithm, " ".join(now)))

    # ---- files
    def converge_file(self, path: str, existing, content) -> bool:
        """Make `path` hold `content` (None: absent). Returns whether it changed (or would)."""
        if existing == content:
            return False
        self.diffs.append({"before_header": path, "after_header": path,
                           "before": existing or "", "after": content or ""})
        if not self.module.check_mode:
            if content is None:
                os.unlink(path)
            else:
                self.write_file(path, content)
        return True

    def write_file(self, path: str, content: str):
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ansible-sysctl_bbr-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            self.module.atomic_move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ---- runtime
    def plan(self, desired: dict) -> dict:
        """Per key: before, and what the runtime write would meet (already, pending, or why not applicable)."""
        entries = {}
        allowed = (_sysctl.read_key(self.root, ALLOWED_KEY) or "").split()
        for key, value in desired.items():
            scope = _sysctl.scope_of(key)
            before = _sysctl.read_key(self.root, key)
            entry = {"desired": value, "before": before, "after": before, "scope": scope}
            entries[key] = entry
            if value is None:
                entry["runtime"], entry["reason"] = "not_applicable", self.no_default_reason(key)
            elif before is None:
                entry["runtime"], entry["reason"] = "not_applicable", self.absent_reason(key, scope)
            elif before == value:
                entry["runtime"] = "already"
            elif not _sysctl.key_writable(self.root, key):
                entry["runtime"], entry["reason"] = "not_applicable", self.read_only_key_reason(key, scope)
            elif key == CC_KEY and not self.initial_netns and allowed and value not in allowed:
                entry["runtime"], entry["reason"] = "not_applicable", self.not_allowed_reason(value, allowed)
            elif self.read_only and not self.params["remount_proc_sys"]:
                entry["runtime"], entry["reason"] = "not_applicable", self.read_only_mount_reason()
            else:
                entry["runtime"] = "pending"
        return entries

    def absent_reason(self, key: str, scope: str) -> str:
        if scope == _sysctl.SCOPE_INITIAL_ONLY and not self.initial_netns:
            return ("%s exists only in the initial network namespace and this host runs in another one (a container): "
                    "set it on the machine that runs the container" % key)
        return ("%s does not exist under %s on kernel %s: check the name, or load the kernel module that provides it"
                % (key, self.root, self.release))

    def read_only_key_reason(self, key: str, scope: str) -> str:
        if scope == _sysctl.SCOPE_INITIAL_ONLY and not self.initial_netns:
            return ("%s belongs to the initial network namespace; this host runs in another one (a container), "
                    "where the kernel shows it read-only: set it on the machine that runs the container" % key)
        return "the kernel shows %s read-only here (no write permission on %s)" % (key, _sysctl.key_path(self.root, key))

    @staticmethod
    def not_allowed_reason(value: str, allowed: list) -> str:
        return ("a non-initial network namespace (a container) may only choose congestion control algorithms listed in "
                "%s (%s), and '%s' is not: the kernel refuses it with EPERM; add it there on the host "
                "or set it on the host" % (ALLOWED_KEY, " ".join(allowed), value))

    def read_only_mount_reason(self, detail: str = "") -> str:
        return ("%s is mounted read-only (containers mount it so)%s: set remount_proc_sys=true (needs CAP_SYS_ADMIN) "
                "or apply it on the host" % (self.root, detail))

    def no_default_reason(self, key: str) -> str:
        return ("no value to restore %s to: no other sysctl configuration sets it and its kernel default is not known "
                "to this module; it keeps its runtime value until reboot (give it in restore_values)" % key)

    def remount(self, mode: str):
        mount = self.module.get_bin_path("mount")
        if not mount:
            return "no mount command"
        rc, out, err = self.module.run_command([mount, "-o", "remount,bind," + mode, self.root], environ_update={"LC_ALL": "C"})
        return None if rc == 0 else "`mount -o remount,bind,%s %s` failed: %s" % (mode, self.root, (err or out).strip())

    def apply(self, entries: dict):
        pending = [key for key, entry in entries.items() if entry["runtime"] == "pending"]
        if self.module.check_mode:
            for key in pending:
                entries[key].update(runtime="would_apply", after=entries[key]["desired"])
            return
        if not pending:
            return
        if self.read_only:
            failure = self.remount("rw")
            if failure:
                for key in pending:
                    entries[key].update(runtime="not_applicable", reason=self.read_only_mount_reason(" and " + failure))
                return
            self.remounted = True
        try:
            for key in pending:
                self.write(key, entries[key])
        finally:
            if self.remounted:
                failure = self.remount("ro")
                if failure:
                    self.module.warn("%s was left read-write: %s" % (self.root, failure))

    def write(self, key: str, entry: dict):
        error = _sysctl.write_key(self.root, key, entry["desired"])
        if error is None:
            entry["after"] = _sysctl.read_key(self.root, key)
            if entry["after"] == entry["desired"]:
                entry["runtime"] = "applied"
            else:
                entry["runtime"] = "not_applicable"
                entry["reason"] = "the kernel kept '%s' after '%s' was written to %s" % (entry["after"], entry["desired"], key)
            return
        if _sysctl.refused_value(error):
            if self.remounted:
                self.remount("ro")
                self.remounted = False
            self.fail("kernel %s refused %s = '%s' (%s): check the value (an unknown qdisc or algorithm, or a malformed "
                      "number); nothing was persisted" % (self.release, key, entry["desired"], os.strerror(error.errno)))
        entry["runtime"] = "not_applicable"
        if error.errno == errno.EROFS:
            entry["reason"] = self.read_only_mount_reason()
        elif key == CC_KEY and error.errno == errno.EPERM:
            entry["reason"] = self.not_allowed_reason(entry["desired"], (_sysctl.read_key(self.root, ALLOWED_KEY) or "").split())
        elif error.errno in (errno.EPERM, errno.EACCES) and entry["scope"] == _sysctl.SCOPE_INITIAL_ONLY:
            entry["reason"] = self.read_only_key_reason(key, entry["scope"])
        else:
            entry["reason"] = "writing %s failed: %s" % (_sysctl.key_path(self.root, key), os.strerror(error.errno))

    # ---- the two states
    def restore_targets(self) -> dict:
        desired = self.desired_values()
        persisted = _sysctl.parse_conf(read_text(self.sysctl_path) or "")
        search = self.params["sysctl_search_paths"]
        if search is None:
            search = [self.params["sysctl_d_dir"], *_sysctl.DEFAULT_SEARCH_PATHS[1:]]
        configured = _sysctl.configured_values(search, exclude=self.sysctl_path)
        restore = {_sysctl.normalize_key(key): _sysctl.normalize_value(value) for key, value in (self.params["restore_values"] or {}).items()}
        targets = {}
        for key in list(desired) + [key for key in persisted if key not in desired]:
            targets[key] = restore.get(key, configured.get(key, _sysctl.KERNEL_DEFAULTS.get(key)))
        return targets

    def run(self) -> dict:
        present = self.params["state"] == "present"
        if present:
            desired = self.desired_values()
            module_info = self.ensure_algorithm(desired[CC_KEY])
        else:
            desired = self.restore_targets()
            name = "tcp_" + self.params["congestion_control"]
            existing = read_text(self.modules_path)
            module_info = {"name": name, "loaded": False, "path": self.modules_path, "persisted": False,
                           "changed": self.converge_file(self.modules_path, existing, None)}
        entries = self.plan(desired)
        self.apply(entries)
        if present:
            content = _sysctl.render_conf(HEADER, desired)
            file_changed = self.converge_file(self.sysctl_path, read_text(self.sysctl_path), content)
        else:
            file_changed = self.converge_file(self.sysctl_path, read_text(self.sysctl_path), None)
        runtime_before = "".join("%s = %s\n" % (key, entry["before"]) for key, entry in entries.items())
        runtime_after = "".join("%s = %s\n" % (key, entry["after"]) for key, entry in entries.items())
        if runtime_before != runtime_after:
            self.diffs.append({"before_header": "runtime (%s)" % self.root, "after_header": "runtime (%s)" % self.root,
                               "before": runtime_before, "after": runtime_after})
        not_applicable = [key for key, entry in entries.items() if entry["runtime"] == "not_applicable"]
        changed = (self.loaded or file_changed or module_info["changed"] or module_info["loaded"]
                   or any(entry["runtime"] in ("applied", "would_apply") for entry in entries.values()))
        result = {
            "changed": changed,
            "keys": entries,
            "not_applicable": not_applicable,
            "sysctl_file": {"path": self.sysctl_path, "state": "present" if present else "absent", "changed": file_changed},
            "kernel_module": module_info,
            "network_namespace": "initial" if self.initial_netns else "non_initial",
            "proc_sys": {"root": self.root, "read_only": self.read_only, "remounted": self.remounted},
            "kernel_release": self.release,
        }
        if self.module._diff:
            result["diff"] = self.diffs
        return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            congestion_control=dict(type="str", default="bbr"),
            qdisc=dict(type="str", default="fq"),
            settings=dict(type="dict", default={}),
            sysctl_file=dict(type="str", default="60-autoglm-network.conf"),
            modules_load_file=dict(type="str", default="autoglm-network.conf"),
            load_module=dict(type="bool", default=True),
            modprobe_path=dict(type="path"),
            remount_proc_sys=dict(type="bool", default=False),
            fail_on_not_applicable=dict(type="bool", default=False),
            restore_values=dict(type="dict", default={}),
            proc_sys_root=dict(type="path", default="/proc/sys"),
            sysctl_d_dir=dict(type="path", default="/etc/sysctl.d"),
            modules_load_d_dir=dict(type="path", default="/etc/modules-load.d"),
            sysctl_search_paths=dict(type="list", elements="path"),
        ),
        supports_check_mode=True,
    )
    if not os.path.isdir(module.params["proc_sys_root"]):
        module.fail_json(msg="proc_sys_root %s is not a directory: is /proc mounted?" % module.params["proc_sys_root"])
    tuning = NetworkTuning(module)
    result = tuning.run()
    if result["not_applicable"]:
        verb = "set" if module.params["state"] == "present" else "restored"
        message = "runtime values not %s on this host (%s): %s" % (
            verb, "persisted in %s for the next boot" % tuning.sysctl_path if module.params["state"] == "present" else "its file is removed",
            "; ".join("%s (%s)" % (key, result["keys"][key]["reason"]) for key in result["not_applicable"]))
        if module.params["fail_on_not_applicable"]:
            module.fail_json(msg=message[0].upper() + message[1:], **result)
        module.warn(message[0].upper() + message[1:])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
