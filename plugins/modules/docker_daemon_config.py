#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_config
short_description: Merge settings into Docker's daemon.json key by key, leaving other keys alone
version_added: "0.1.0"
description:
  - Reads Docker's C(daemon.json), merges O(settings) into it and writes the result only when the
    parsed configuration changes, so keys written by other tools (for example C(nvidia-ctk runtime configure))
    survive and Docker needs restarting only when C(changed) is true.
  - Objects (C(runtimes), C(log-opts), ...) are merged recursively; lists (C(registry-mirrors),
    C(insecure-registries), ...) are replaced or extended as O(list_merge) says; scalars are replaced.
  - An existing file that is not valid JSON, or whose top level is not an object, is never overwritten;
    the module fails, naming the line and column, and leaves the file as it was.
  - The new file is written to a temporary file in the same directory and moved into place atomically.
options:
  path:
    description: The daemon configuration file; created (with its directory) when missing.
    type: path
    default: /etc/docker/daemon.json
  settings:
    description:
      - The keys to manage, as they appear in C(daemon.json) (for example C(registry-mirrors), C(log-opts)).
      - With O(state=present) they are merged in. With O(state=absent) they are removed; a key whose value
        is an object removes only the sub-keys it names (a C(runtimes) object naming only C(nvidia) removes the
        C(nvidia) runtime, keeps the others, and drops C(runtimes) if it ends up empty); any other value
        removes the whole key (the value itself is ignored).
      - C(null) values are refused; use O(state=absent) to remove a key.
    type: dict
    required: true
  state:
    description: Whether the keys in O(settings) should be present (merged) or absent (removed).
    type: str
    default: present
    choices: [present, absent]
  list_merge:
    description:
      - How a list in O(settings) combines with the list already in the file.
      - C(replace) makes the file hold exactly the given list; C(union) keeps the existing items and appends
        the given ones that are missing, in order.
    type: str
    default: replace
    choices: [replace, union]
  indent:
    description: Indentation of the written JSON.
    type: int
    default: 2
  backup:
    description: Keep a timestamped copy of the previous file next to it when the module changes it.
    type: bool
    default: false
  validate:
    description:
      - A command run on the new content before it replaces the file, with C(%s) standing for the path of
        the temporary file (for example C(dockerd --validate --config-file %s) on Docker 23 and later).
      - The file is not replaced when the command exits non-zero.
    type: str
extends_documentation_fragment:
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    description: Reports what would change, with the diff, and writes nothing.
  diff_mode:
    support: full
    description: The file's text before and after.
notes:
  - C(changed) compares the parsed JSON, not the text, so re-indenting by hand does not count as a change
    and does not rewrite the file.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Point Docker at the in-cluster registry cache, keeping nvidia-ctk's runtime entry
  autoglm.deploy.docker_daemon_config:
    settings:
      registry-mirrors: ["http://node3:5000"]
      log-driver: json-file
      log-opts: {max-size: 100m, max-file: "3"}
  notify: Restart Docker

- name: Add a mirror to those already configured
  autoglm.deploy.docker_daemon_config:
    settings:
      registry-mirrors: ["https://mirror.example.com"]
    list_merge: union

- name: Remove the nvidia runtime and the default-runtime key, keeping other runtimes
  autoglm.deploy.docker_daemon_config:
    state: absent
    settings:
      runtimes: {nvidia: {}}
      default-runtime: nvidia
"""

RETURN = r"""
config:
  description: The configuration as it is (or, in check mode, would be) after the task.
  returned: always
  type: dict
  sample: {"registry-mirrors": ["http://node3:5000"], "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}}}
changed_keys:
  description: Top-level keys whose value changed (added, modified or removed), sorted.
  returned: always
  type: list
  elements: str
  sample: [registry-mirrors]
path:
  description: The file managed.
  returned: always
  type: str
  sample: /etc/docker/daemon.json
backup_file:
  description: Where the previous file was copied, when O(backup=true) and the file changed.
  returned: changed and backup requested
  type: str
  sample: /etc/docker/daemon.json.12345.2024-05-01@10:00:00~
"""

import copy
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

# Keys Docker reads as lists of strings, and as objects whose values must be strings: a wrong type here
# stops dockerd at its next start, far from the task that wrote it, so it is refused up front.
STRING_LIST_KEYS = ("registry-mirrors", "insecure-registries", "allow-nondistributable-artifacts", "dns",
                    "dns-opts", "dns-search", "exec-opts", "hosts", "labels", "storage-opts")
STRING_MAP_KEYS = ("log-opts",)


class DaemonConfigError(Exception):
    """A problem with the input or the file, worded for the user."""


def merge(current, wanted, list_merge: str):
    """Deep merge of WANTED into CURRENT (neither is modified)."""
    if isinstance(current, dict) and isinstance(wanted, dict):
        result = dict(current)
        for key, value in wanted.items():
            result[key] = merge(current[key], value, list_merge) if key in current else copy.deepcopy(value)
        return result
    if list_merge == "union" and isinstance(current, list) and isinstance(wanted, list):
        return list(current) + [item for item in wanted if item not in current]
    return copy.deepcopy(wanted)


def remove(current: dict, unwanted: dict) -> dict:
    """CURRENT without the keys of UNWANTED; object values descend, emptied objects are dropped."""
    result = dict(current)
    for key, value in unwanted.items():
        if key not in result:
            continue
        if isinstance(value, dict) and value and isinstance(result[key], dict):
            pruned = remove(result[key], value)
            if pruned:
                result[key] = pruned
            else:
                del result[key]
        else:
            del result[key]
    return result


def check_settings(settings: dict, where: str = "settings") -> None:
    for key, value in settings.items():
        name = "%s.%s" % (where, key)
        if value is None:
            raise DaemonConfigError("%s is null; daemon.json has no use for null values. Give it a value, "
                                    "or remove the key with state=absent." % name)
        if isinstance(value, dict):
            check_settings(value, name)
        elif isinstance(value, list) and any(item is None for item in value):
            raise DaemonConfigError("%s contains a null item: %r" % (name, value))
        if where != "settings":
            continue
        if key in STRING_LIST_KEYS and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise DaemonConfigError("%s must be a list of strings, got %r" % (name, value))
        if key in STRING_MAP_KEYS and not (isinstance(value, dict) and all(isinstance(item, str) for item in value.values())):
            raise DaemonConfigError("%s must map names to strings (dockerd refuses numbers here: write max-file: \"3\"), "
                                    "got %r" % (name, value))
        if key == "runtimes" and not (isinstance(value, dict) and all(isinstance(item, dict) for item in value.values())):
            raise DaemonConfigError("%s must map runtime names to objects such as {\"path\": \"nvidia-container-runtime\"}, "
                                    "got %r" % (name, value))


def parse(text: str, path: str) -> dict:
    """The object in TEXT; an empty file counts as an empty object, as dockerd treats it."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        shown = ""
        if line:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                shown = " (line %s reads: %s)" % (line, lines[line - 1].strip()[:120])
        raise DaemonConfigError(
            "%s is not valid JSON: %s%s. Docker cannot read it either. Nothing was written and the file was "
            "left as it is: fix the syntax (or move the file away) and run again." % (path, exc, shown)) from None
    if not isinstance(data, dict):
        raise DaemonConfigError("%s must hold a JSON object at the top level, it holds a %s. Nothing was written."
                                % (path, type(data).__name__))
    return data


def render(config: dict, indent: int) -> str:
    try:
        text = json.dumps(config, indent=indent, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise DaemonConfigError("the merged configuration cannot be written as JSON: %s" % exc) from None
    # What is written must read back as the same configuration.
    if json.loads(text) != config:
        raise DaemonConfigError("the merged configuration does not survive a JSON round trip; check settings for "
                                "values JSON cannot represent")
    return text


class DaemonConfig:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.path = module.params["path"]

    def read(self):
        """(text, config) of the file; ('', {}) when it does not exist."""
        if not os.path.exists(self.path):
            return None, {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise DaemonConfigError("cannot read %s: %s" % (self.path, exc)) from None
        return text, parse(text, self.path)

    def desired(self, current: dict) -> dict:
        params = self.module.params
        check_settings(params["settings"])
        if params["state"] == "absent":
            return remove(current, params["settings"])
        return merge(current, params["settings"], params["list_merge"])

    def write(self, text: str) -> str | None:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(prefix=".daemon.json.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            if not os.path.exists(self.path):
                os.chmod(tmp, 0o644)
            command = self.module.params["validate"]
            if command:
                if "%s" not in command:
                    raise DaemonConfigError("validate must contain %%s for the file to check, got: %s" % command)
                rc, out, err = self.module.run_command(command % tmp, environ_update={"LC_ALL": "C"})
                if rc != 0:
                    raise DaemonConfigError("validation of the new %s failed (%s, rc=%d): %s; nothing was written"
                                            % (self.path, command, rc, (err or out).strip()))
            backup = self.module.backup_local(self.path) if self.module.params["backup"] and os.path.exists(self.path) else None
            self.module.atomic_move(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return backup


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/docker/daemon.json"),
            settings=dict(type="dict", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            list_merge=dict(type="str", default="replace", choices=["replace", "union"]),
            indent=dict(type="int", default=2),
            backup=dict(type="bool", default=False),
            validate=dict(type="str"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    daemon = DaemonConfig(module)
    result = dict(changed=False, path=daemon.path)
    try:
        before_text, current = daemon.read()
        wanted = daemon.desired(current)
        after_text = render(wanted, module.params["indent"])
    except DaemonConfigError as exc:
        module.fail_json(msg=to_native(exc), **result)

    missing = object()
    result["changed_keys"] = sorted(key for key in set(current) | set(wanted) if current.get(key, missing) != wanted.get(key, missing))
    result["config"] = wanted
    result["changed"] = wanted != current
    if result["changed"] and module._diff:
        result["diff"] = dict(before=before_text or "", after=after_text,
                              before_header=daemon.path, after_header=daemon.path)
    if result["changed"] and not module.check_mode:
        try:
            backup = daemon.write(after_text)
        except DaemonConfigError as exc:
            module.fail_json(msg=to_native(exc), **result)
        except OSError as exc:
            module.fail_json(msg="cannot write %s: %s" % (daemon.path, exc), **result)
        if backup:
            result["backup_file"] = backup
    if os.path.exists(daemon.path) and not module.check_mode:
        file_args = module.load_file_common_arguments(module.params)
        result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
