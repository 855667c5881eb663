# SPDX-License-Identifier: Apache-2.0
"""Filter systemd_command_line: an argv list as one systemd ExecStart= value that systemd splits back exactly."""
from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: systemd_command_line
short_description: Quote an argument list for a systemd ExecStart= line
version_added: "0.1.0"
description:
  - Joins O(_input) into one command line that systemd splits back into the same argument list
    (see systemd.syntax(7) and "Command lines" in systemd.service(5)).
  - Plain words stay bare; others are single-quoted (JSON flag values keep their double quotes), or
    double-quoted with C escapes when they hold a single quote, a backslash or a control character.
  - C(%) and C($) are doubled so systemd neither expands specifiers nor substitutes variables.
options:
  _input:
    description: The program and its arguments; numbers are turned into strings.
    type: list
    elements: raw
    required: true
"""

EXAMPLES = r"""
exec_start: "{{ [venv ~ '/bin/python', '-m', 'vllm.entrypoints.openai.api_server',
               '--limit-mm-per-prompt', {'image': 10} | to_json] | autoglm.deploy.systemd_command_line }}"
# -> /opt/venv/bin/python -m vllm.entrypoints.openai.api_server --limit-mm-per-prompt '{"image": 10}'
"""

RETURN = r"""
_value:
  description: The quoted command line.
  type: str
"""

_BARE = re.compile(r"[A-Za-z0-9_./:=,+@-]+")
_NEEDS_ESCAPES = re.compile(r"['\\\x00-\x1f]")  # a single quote, a backslash or a control character
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(arg) -> str:
    if isinstance(arg, (dict, list)) or arg is None:
        raise AnsibleFilterError("systemd_command_line: argument %r is not a string or number; pass JSON values "
                                 "through to_json first" % (arg,))
    text = str(arg).replace("%", "%%").replace("$", "$$")
    if _BARE.fullmatch(text):
        return text
    if not _NEEDS_ESCAPES.search(text):
        return "'%s'" % text
    return '"%s"' % "".join(_C_ESCAPES.get(ch, "\\x%02x" % ord(ch) if ord(ch) < 0x20 else ch) for ch in text)


def systemd_command_line(argv) -> str:
    if not isinstance(argv, (list, tuple)) or not argv:
        raise AnsibleFilterError("systemd_command_line: expected a non-empty list of arguments, got %r" % (argv,))
    return " ".join(_quote(arg) for arg in argv)


class FilterModule:
    def filters(self):
        return {"systemd_command_line": systemd_command_line}
