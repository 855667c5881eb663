# SPDX-License-Identifier: Apache-2.0
"""Audit log callback, and (run as a script) its verifier: python audit_log.py verify LOG."""
from __future__ import annotations

DOCUMENTATION = r"""
---
name: audit_log
type: notification
short_description: Tamper-evident audit trail, one HMAC-chained JSON line per task result
version_added: "0.1.0"
description:
  - Each task result becomes one JSON object on its own line, and each run ends with a summary line.
    A task line holds C(time) (ISO-8601 UTC with offset), C(run_id), C(seq) (the line number), C(user)
    (the controller user), C(remote_user), C(become_user), C(controller), C(playbook), C(play), C(task),
    C(action), C(host), C(address) (the C(ansible_host) actually used), C(resource) (the host plus the
    module's key argument - path, dest, name, unit, repo, src - and the changed loop items), C(result)
    (ok, changed, failed, skipped or unreachable), C(duration_s), and for failures of ordinary tasks a
    message cut to 500 characters.
  - It never records module arguments other than those key arguments, nor results. For a C(no_log) task
    it records neither the name (a secret templated into it would leak), the key argument nor a message,
    only a fixed placeholder, the action and the outcome. Values under keys that look secret (token,
    password, secret, key, ...) are redacted, and the values of such variables and of vaulted variables
    are cut out of everything recorded, ordinary task names included.
  - Each line carries C(mac), the HMAC-SHA256 of the previous line's C(mac) and this line's canonical
    JSON, under a secret key; the chain head (last line number and MAC, itself keyed) is kept in
    C(PATH.head). An edited, inserted, deleted, reordered or cut-off line is found by the verifier,
    which prints the first bad line and exits 1, or a summary and exits 0 -
    C(python <collection>/plugins/callback/audit_log.py verify PATH) (see notes).
  - The file is created mode 0600 (a wider mode is tightened, with a warning), never through a symbolic
    link, in a directory that is not writable by others. Concurrent runs appending to one file take an
    exclusive lock around reading the last MAC and appending.
  - Enable it with C(callbacks_enabled = autoglm.deploy.audit_log) in C(ansible.cfg). If the log
    cannot be used, Ansible warns and the run continues without it.
requirements:
  - enable in configuration
notes:
  - "Verify with C(python plugins/callback/audit_log.py verify ~/.ansible/autoglm-audit.jsonl) from a clone;
    where the collection is installed, run the same file from the collection's directory, which
    C(ansible-galaxy collection list autoglm.deploy) shows (in an execution environment
    C(/usr/share/ansible/collections/ansible_collections/autoglm/deploy/plugins/callback/audit_log.py)).
    It needs only the Python standard library, so a copy of the log and the key can be checked anywhere.
    It reads the key as the callback does - C(AUTOGLM_AUDIT_KEY), C(--key-file) or C(AUTOGLM_AUDIT_KEY_FILE),
    else C(PATH.key) - and C(--help) lists its options."
  - Whoever can read the key can rewrite the log undetected. The generated key lies beside the log for
    convenience; for a real audit trail set C(key) or C(key_file) to a key the operators of the
    controller cannot read, or forward to a SIEM with C(syslog_address), which also keeps lines an
    attacker later deletes from the file. Rotating the key means starting a new log file.
  - In AWX or an execution environment the home directory is discarded after each job; point C(path) at
    a persistent volume or forward with C(syslog_address).
options:
  path:
    description: File the JSON lines are appended to; its directory is created (mode 0700) if missing.
    type: path
    default: ~/.ansible/autoglm-audit.jsonl
    env:
      - name: AUTOGLM_AUDIT_LOG
    ini:
      - section: callback_audit_log
        key: path
  key:
    description:
      - Secret for the HMAC chain, as text. Takes precedence over O(key_file).
      - Without O(key) and O(key_file), a random key is generated into C(PATH.key) (mode 0600) on first use,
        with a warning.
    type: str
    env:
      - name: AUTOGLM_AUDIT_KEY
    ini:
      - section: callback_audit_log
        key: key
  key_file:
    description: File holding the secret for the HMAC chain (mode 0600; a wider mode is tightened, with a warning).
    type: path
    env:
      - name: AUTOGLM_AUDIT_KEY_FILE
    ini:
      - section: callback_audit_log
        key: key_file
  syslog_address:
    description:
      - Also send every line, unchanged, to syslog for a SIEM. C(HOST:PORT) (C([IPv6]:PORT)) sends UDP
        datagrams; a path such as C(/dev/log) uses the local syslog daemon, which can forward over TLS.
      - Empty (the default) sends nothing.
    type: str
    default: ""
    env:
      - name: AUTOGLM_AUDIT_SYSLOG_ADDRESS
    ini:
      - section: callback_audit_log
        key: syslog_address
  syslog_facility:
    description: Syslog facility of the forwarded lines (failures are sent at warning priority, the rest at info).
    type: str
    default: local0
    choices: [user, daemon, auth, authpriv, local0, local1, local2, local3, local4, local5, local6, local7]
    env:
      - name: AUTOGLM_AUDIT_SYSLOG_FACILITY
    ini:
      - section: callback_audit_log
        key: syslog_facility
"""

import argparse
import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import re
import secrets
import socket
import stat
import sys
import time
import uuid
from datetime import datetime, timezone

try:
    from ansible.errors import AnsibleError
    from ansible.plugins.callback import CallbackBase
    from ansible.template import Templar
except ImportError:  # the verifier runs wherever the log is copied to, Ansible or not
    AnsibleError, CallbackBase = RuntimeError, object
try:
    from ansible.parsing.vault import VaultHelper

    def _is_vaulted(value) -> bool:
        return VaultHelper.get_ciphertext(value, with_tags=False) is not None
except ImportError:  # ansible-core before 2.19: vaulted values are AnsibleVaultEncryptedUnicode
    def _is_vaulted(value) -> bool:
        return bool(getattr(value, "__ENCRYPTED__", False))

MESSAGE_LIMIT = 500
VALUE_LIMIT = 200
ITEMS_LIMIT = 20
NO_LOG_TASK = "(no_log task)"
REDACTED = "<redacted>"
# Module arguments that name what a task changes; recorded (redacted) unless the task is no_log.
RESOURCE_ARGS = ("path", "dest", "name", "unit", "repo", "repo_id", "src")
SECRET_NAME = re.compile(r"token|passw|pass$|secret|key|credential|cookie|auth|private|_pass_|api_?key", re.I)
# Variables that are not the user's: big or self-referencing.
SKIPPED_VARS = frozenset(("hostvars", "groups", "group_names", "vars", "ansible_facts", "ansible_local", "omit"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- The chain: one home for its format, used by the callback and the verifier -----------------------

def canonical(record: dict) -> str:
    """The exact text of a line: the verifier rejects any other spelling of the same object."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def line_mac(key: bytes, previous_mac: str, record: dict) -> str:
    body = {name: value for name, value in record.items() if name != "mac"}
    return hmac.new(key, (previous_mac + "\n" + canonical(body)).encode(), hashlib.sha256).hexdigest()


def head_mac(key: bytes, seq: int, mac: str) -> str:
    # Keyed, so a truncated log cannot be given a matching head by copying a MAC from the file.
    return hmac.new(key, ("head\n%d\n%s" % (seq, mac)).encode(), hashlib.sha256).hexdigest()


def head_path(path: str) -> str:
    return path + ".head"


def default_key_file(path: str) -> str:
    return path + ".key"


def tighten(path: str, fd: int | None, what: str, warn) -> None:
    """Mode 0600 for a file only its owner should read; a wider mode is narrowed, with a warning."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode if fd is not None else os.stat(path).st_mode)
    if mode & 0o077:
        if fd is not None:
            os.fchmod(fd, 0o600)
        else:
            os.chmod(path, 0o600)
        warn("audit_log: %s %s had mode %04o, now 0600" % (what, path, mode))


def read_key_file(path: str, warn) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        tighten(path, handle.fileno(), "key file", warn)
        key = handle.read().strip()
    if len(key) < 16:
        raise AnsibleError("audit_log: key file %s holds fewer than 16 bytes" % path)
    return key


def last_record(fd: int) -> dict | None:
    """The last complete line's object (lines are short: the tail of the file holds it)."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, min(size, 256 * 1024), max(0, size - 256 * 1024))
    for raw in reversed(tail.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if isinstance(record, dict):
                return record
    return None


def append_chained(path: str, key: bytes, record: dict) -> str:
    """Append record with seq and mac under an exclusive lock; returns the line as written."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        reader = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            previous = last_record(reader) or {}
        finally:
            os.close(reader)
        record = dict(record, seq=int(previous.get("seq") or 0) + 1)
        record["mac"] = line_mac(key, str(previous.get("mac") or ""), record)
        line = canonical(record)
        os.write(fd, (line + "\n").encode())
        head = {"seq": record["seq"], "mac": record["mac"], "head_mac": head_mac(key, record["seq"], record["mac"])}
        temporary = head_path(path) + ".tmp"
        head_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(head_fd, "w") as handle:
            handle.write(canonical(head) + "\n")
        os.replace(temporary, head_path(path))
        return line
    finally:
        os.close(fd)  # also releases the lock


def verify(path: str, key: bytes, head: str | None) -> tuple:
    """(ok, message). Checks every line's form and MAC in order, then the chain head when given."""
    previous_mac, count, first, last, runs = "", 0, None, None, set()
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                record = json.loads(text)
            except ValueError:
                return False, "%s:%d: not a JSON line (edited or cut off)" % (path, number)
            if not isinstance(record, dict) or not isinstance(record.get("mac"), str):
                return False, "%s:%d: no MAC on this line" % (path, number)
            if canonical(record) != text:
                return False, "%s:%d: not written by audit_log (edited)" % (path, number)
            if record.get("mac") != line_mac(key, previous_mac, record) or record.get("seq") != number:
                seq = record.get("seq")
                why = ("a line before it was deleted" if isinstance(seq, int) and seq > number else
                       "lines were reordered or inserted" if isinstance(seq, int) and seq < number else
                       "it was edited, or the key is not the one it was written with")
                return False, "%s:%d: MAC mismatch (%s)" % (path, number, why)
            previous_mac, count = record["mac"], number
            first, last = first or record.get("time"), record.get("time")
            runs.add(record.get("run_id"))
    note = ""
    if head is not None:
        try:
            with open(head, encoding="utf-8") as handle:
                recorded = json.load(handle)
            seq, mac = int(recorded["seq"]), str(recorded["mac"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return False, "%s: chain head %s unreadable (%s); --no-head to check the lines alone" % (path, head, exc)
        if not hmac.compare_digest(str(recorded.get("head_mac", "")), head_mac(key, seq, mac)):
            return False, "%s: chain head %s was edited" % (path, head)
        if seq > count:
            return False, "%s:%d: the log ends here but its head records %d lines (tail cut off)" % (path, count + 1, seq)
        if seq == count and mac != previous_mac:
            return False, "%s:%d: last line differs from the one its head records" % (path, count)
        if seq < count:
            note = "; %d line(s) after the recorded head (a run ended before updating it)" % (count - seq)
    else:
        note = "; chain head not checked, a cut-off tail would go unnoticed"
    return True, "%s: intact, %d lines, %d run(s), %s to %s%s" % (path, count, len(runs), first, last, note)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="audit_log.py", description="Check an autoglm.deploy.audit_log file.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check every line's MAC and the chain head; exit 1 at the first bad line")
    check.add_argument("path", help="the audit log, e.g. ~/.ansible/autoglm-audit.jsonl")
    check.add_argument("--key-file", default=os.environ.get("AUTOGLM_AUDIT_KEY_FILE"),
                       help="key file (default: AUTOGLM_AUDIT_KEY, then AUTOGLM_AUDIT_KEY_FILE, then PATH.key)")
    check.add_argument("--head", help="chain head file (default: PATH.head)")
    check.add_argument("--no-head", action="store_true", help="check the lines only (a copy without its head)")
    args = parser.parse_args(argv)
    path = os.path.expanduser(args.path)

    def warn(message):
        print(message, file=sys.stderr)

    try:
        if os.environ.get("AUTOGLM_AUDIT_KEY"):
            key = os.environ["AUTOGLM_AUDIT_KEY"].encode()
        else:
            key = read_key_file(os.path.expanduser(args.key_file or default_key_file(path)), warn)
        ok, message = verify(path, key, None if args.no_head else os.path.expanduser(args.head or head_path(path)))
    except (OSError, AnsibleError) as exc:
        print("audit_log verify: %s" % exc, file=sys.stderr)
        return 2
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


# --- What a line says --------------------------------------------------------------------------------

class _Scrubber:
    """Redacts secret-named keys and cuts known secret values out of text."""

    def __init__(self, values=()):
        # Longest first, so a secret containing another is cut whole.
        self.values = sorted({value for value in values if len(value) >= 4}, key=len, reverse=True)

    def text(self, value, limit: int = VALUE_LIMIT) -> str:
        value = str(value)
        for secret in self.values:
            value = value.replace(secret, REDACTED)
        return value[:limit]

    def value(self, value):
        if isinstance(value, dict):
            return {str(name): REDACTED if SECRET_NAME.search(str(name)) else self.value(item)
                    for name, item in list(value.items())[:ITEMS_LIMIT]}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value[:ITEMS_LIMIT]]
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        return self.text(value)


def _key_args(args: dict) -> dict:
    return {name: args[name] for name in RESOURCE_ARGS if args.get(name) not in (None, "")}


def _secret_values(variables: dict, templar) -> set:
    """Values of secret-named and of vaulted variables, nested ones included."""
    found: set = set()

    def walk(name: str, value, depth: int) -> None:
        with contextlib.suppress(Exception):  # an undecryptable or broken variable is simply not known
            if _is_vaulted(value):
                found.add(str(value))
                return
            if isinstance(value, dict) and depth < 4:
                for child, item in value.items():
                    walk(str(child), item, depth + 1)
            elif isinstance(value, (list, tuple)) and depth < 4:
                for item in value:
                    walk(name, item, depth + 1)
            elif isinstance(value, (str, int)) and not isinstance(value, bool) and SECRET_NAME.search(name):
                found.add(str(templar.template(value) if isinstance(value, str) else value))

    for name, value in variables.items():
        if name not in SKIPPED_VARS:
            walk(name, value, 0)
    return found


class _SyslogForwarder(logging.handlers.SysLogHandler):
    """Warns once when a line cannot be sent, instead of a traceback per line."""

    warned = False

    def handleError(self, record):
        if not self.warned:
            self.warned = True
            print("[WARNING]: audit_log: a line could not be sent to syslog %s: %s" % (self.address, sys.exc_info()[1]),
                  file=sys.stderr)


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
        self.play = None
        self.run_started = time.monotonic()
        self.task_started: dict = {}
        self.host_context: dict = {}
        self.path = None
        self.key = b""
        self.syslog = None

    # --- set up: the file, the key, syslog ---

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.path = os.path.abspath(os.path.expanduser(self.get_option("path")))
        folder = os.path.dirname(self.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if stat.S_IMODE(os.stat(folder).st_mode) & 0o002:
            # Anyone could replace the file or plant a link there; no trail is better than a forgeable one.
            raise AnsibleError("audit_log: %s is writable by everyone; choose a private directory for path" % folder)
        if os.path.islink(self.path):
            raise AnsibleError("audit_log: %s is a symbolic link; not writing through it" % self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            tighten(self.path, fd, "audit log", self._display.warning)
        finally:
            os.close(fd)
        self.key = self._load_key()
        address = self.get_option("syslog_address")
        if address:
            try:
                self.syslog = self._syslog_handler(address, self.get_option("syslog_facility"))
            except OSError as exc:  # the file still gets every line
                self._display.warning("audit_log: not forwarding to syslog %s: %s" % (address, exc))

    def _load_key(self) -> bytes:
        if self.get_option("key"):
            return self.get_option("key").encode()
        key_file = self.get_option("key_file")
        if key_file:
            return read_key_file(os.path.expanduser(key_file), self._display.warning)
        key_file = default_key_file(self.path)
        if not os.path.lexists(key_file):
            # Written aside, then linked into place: a concurrent first run never reads a half-written key.
            temporary = "%s.%d.tmp" % (key_file, os.getpid())
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            try:
                os.link(temporary, key_file)
            except FileExistsError:
                return read_key_file(key_file, self._display.warning)
            finally:
                os.unlink(temporary)
            self._display.warning("audit_log: no key configured; generated %s (mode 0600). Whoever can read it can "
                                  "rewrite the log undetected: set key or key_file to a key kept elsewhere." % key_file)
        return read_key_file(key_file, self._display.warning)

    @staticmethod
    def _syslog_handler(address: str, facility: str):
        if address.startswith("/"):
            target = address
        else:
            host, _sep, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise AnsibleError("audit_log: syslog_address %r is neither HOST:PORT nor a socket path" % address)
            target = (host.strip("[]"), int(port))
        handler = _SyslogForwarder(address=target, facility=facility)
        handler.ident = "autoglm-audit: "
        return handler

    # --- writing ---

    def _write(self, record: dict) -> None:
        record = dict({"time": _now(), "run_id": self.run_id, "user": self.user, "controller": self.controller,
                       "playbook": self.playbook}, **record)
        line = append_chained(self.path, self.key, record)
        if self.syslog is not None:
            level = logging.WARNING if record.get("result") in ("failed", "unreachable") else logging.INFO
            self.syslog.emit(logging.LogRecord("autoglm.audit", level, __file__, 0, line, None, None))

    def _context(self, host) -> dict:
        """Address, users and secret values of a host in this play, worked out once per play and host."""
        cache_key = (id(self.play), host.get_name())
        if cache_key not in self.host_context:
            context = {"address": host.get_name(), "remote_user": None, "become_user": None, "become": None,
                       "secrets": set(), "templar": None}
            with contextlib.suppress(Exception):  # without the variables a line still says what ran where
                variables = self.play.get_variable_manager().get_vars(play=self.play, host=host)
                templar = Templar(loader=self.play.get_loader(), variables=variables)

                def var(*names):
                    for name in names:
                        if variables.get(name) not in (None, ""):
                            return str(templar.template(variables[name]))
                    return None
                become = var("ansible_become")
                context.update(address=var("ansible_host", "ansible_ssh_host") or host.get_name(),
                               remote_user=var("ansible_user", "ansible_ssh_user"),
                               become_user=var("ansible_become_user"),
                               become=None if become is None else become.lower() in ("1", "true", "yes", "on"),
                               secrets=_secret_values(variables, templar), templar=templar)
            self.host_context[cache_key] = context
        return self.host_context[cache_key]

    @staticmethod
    def _task_secrets(task, context) -> set:
        """Secret values among the task's and its blocks' own vars (the play's are in the host context)."""
        if context["templar"] is None:
            return set()
        with contextlib.suppress(Exception):
            return _secret_values(task.get_vars(), context["templar"])
        return set()

    def _record_result(self, result, outcome: str) -> None:
        task, res, fields = result._task, result._result, result._task_fields
        host = result._host.get_name()
        context = self._context(result._host)
        scrub = _Scrubber(context["secrets"] | self._task_secrets(task, context))
        loop_results = res.get("results") if isinstance(res.get("results"), list) else []
        # Any sign of no_log counts: the templated keyword, the result's flag, any item's flag.
        no_log = bool(fields.get("no_log") or task.no_log or res.get("_ansible_no_log")
                      or any(isinstance(item, dict) and item.get("_ansible_no_log") for item in loop_results))
        delegated = res.get("_ansible_delegated_vars") or {}
        changed = bool(res.get("changed", False))
        become = context["become"] if context["become"] is not None else bool(fields.get("become"))
        started = self.task_started.get(task._uuid)
        resource: dict = {"host": host}
        if not no_log and loop_results:
            # A loop's own args are untemplated; each changed item says what it changed.
            items = [_key_args((item.get("invocation") or {}).get("module_args") or {}) or item.get("item")
                     for item in loop_results if isinstance(item, dict) and item.get("changed")]
            if items:
                resource["changed_items"] = scrub.value(items)
        elif not no_log:
            resource.update(scrub.value(_key_args(fields.get("args") or {})))
        record = {
            "event": "task",
            "host": host,
            "address": delegated.get("ansible_host") or context["address"],
            "delegated_to": delegated.get("ansible_delegated_host") or None,
            "remote_user": delegated.get("ansible_user") or context["remote_user"] or fields.get("remote_user"),
            "become_user": (context["become_user"] or fields.get("become_user") or "root") if become else None,
            "play": scrub.text(self.play.get_name()) if self.play else None,
            "task": NO_LOG_TASK if no_log else scrub.text(result.task_name),
            "action": fields.get("action") or task.action,
            "resource": resource,
            "result": "changed" if outcome == "ok" and changed else outcome,
            "status": outcome,
            "changed": changed,
            "failed": outcome == "failed",
            "check_mode": bool(fields.get("check_mode")),
            "duration_s": round(time.monotonic() - started, 3) if started else None,
        }
        if outcome in ("failed", "unreachable") and not no_log:
            record["msg"] = scrub.text(res.get("msg", ""), MESSAGE_LIMIT)
        self._write(record)

    # --- events ---

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)
        self.run_started = time.monotonic()

    def v2_playbook_on_play_start(self, play):
        self.play = play
        self.host_context.clear()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.task_started[task._uuid] = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self.task_started[task._uuid] = time.monotonic()

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


if __name__ == "__main__":
    raise SystemExit(main())
