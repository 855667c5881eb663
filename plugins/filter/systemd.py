# SPDX-License-Identifier: Apache-2.0
"""Filters for what reaches a systemd unit or EnvironmentFile=: the one home of the rule that a role variable
must not change the meaning of the file it lands in (systemd_command_line, systemd_unit_value, systemd_env_line,
systemd_input_problems)."""
from __future__ import annotations

import posixpath
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
  - C(%) and C($) are doubled so systemd neither expands specifiers nor substitutes variables, except in the
    arguments named in O(verbatim).
options:
  _input:
    description: The program and its arguments; numbers are turned into strings.
    type: list
    elements: raw
    required: true
  verbatim:
    description:
      - Arguments that systemd is meant to expand (a template unit's C(%i), a C(${VARIABLE}) from its
        EnvironmentFile), written as they are. Each may hold only specifiers, C(${NAME}) references and
        blank-free plain characters.
    type: list
    elements: str
    default: []
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
    if "\x00" in str(arg):
        raise AnsibleFilterError("systemd_command_line: an argument holds a NUL character, which no argv can carry")
    text = str(arg).replace("%", "%%").replace("$", "$$")
    if _BARE.fullmatch(text):
        return text
    if not _NEEDS_ESCAPES.search(text):
        return "'%s'" % text
    return '"%s"' % "".join(_C_ESCAPES.get(ch, "\\x%02x" % ord(ch) if ord(ch) < 0x20 else ch) for ch in text)


# What systemd itself is meant to expand in an argument passed verbatim: specifiers (%i) and ${VARIABLE} references
# (specifiers first, so ${NAME_%i} names a variable per instance).
_VERBATIM = re.compile(r"(?:[A-Za-z0-9_=,.:/-]|%[a-zA-Z]|\$\{[A-Za-z_](?:[A-Za-z0-9_]|%[a-zA-Z])*\})+")


def systemd_command_line(argv, verbatim=()) -> str:
    if not isinstance(argv, (list, tuple)) or not argv:
        raise AnsibleFilterError("systemd_command_line: expected a non-empty list of arguments, got %r" % (argv,))
    for arg in verbatim:
        if not _VERBATIM.fullmatch(str(arg)):
            raise AnsibleFilterError("systemd_command_line: %r is not a specifier or ${VARIABLE} reference" % (arg,))
    return " ".join(str(arg) if arg in verbatim else _quote(arg) for arg in argv)


# Control characters end a line or change its meaning in both file formats; a tab is kept in env values only.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# systemd's unit-name charset (unit_name_is_valid), without "@" (template units) and "\\" (its escape).
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.-]+")
# useradd's default NAME_REGEX, 32 characters at most.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# One blank-free token of a list directive (RestrictAddressFamilies=, IPAddressAllow=).
_WORD = re.compile(r"[A-Za-z0-9_.:/+-]+")
# MemoryMax=, TasksMax= and the like: a size with an optional K/M/G/T suffix, a percentage, or infinity.
# An API key bound for an Authorization header and HAProxy's configuration: RFC 6750's b64token, so it needs no
# quoting in either (no blank, quote, '%' or '$' that HAProxy would read as a log-format or variable).
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# An HAProxy identifier (a server's name is an inventory host's).
_HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_RESOURCE_LIMIT = re.compile(r"infinity|[0-9]+(\.[0-9]+)?[KMGT]?|[0-9]+(\.[0-9]+)?%")
# Inside double quotes systemd's env-file parser unescapes exactly these (SHELL_NEED_ESCAPE); older and newer
# versions agree on them, so nothing else is escaped.
_ENV_ESCAPES = {'"': '\\"', "\\": "\\\\", "$": "\\$", "`": "\\`"}


def _line_problem(text: str) -> str | None:
    found = _CONTROL.search(text)
    if found:
        return "holds the control character %r at position %d" % (found.group(), found.start())
    if text != text.strip():
        return "starts or ends with blanks, which systemd strips"
    if text.endswith("\\"):
        return "ends with a backslash, which joins the next line of the unit"
    return None


def _env_problem(text: str) -> str | None:
    found = _ENV_CONTROL.search(text)
    if found:
        return "holds the control character %r at position %d" % (found.group(), found.start())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8, which systemd ignores"
    return None


def _path_problem(text: str) -> str | None:
    problem = _line_problem(text)
    if problem:
        return problem
    if not text.startswith("/"):
        return "is not an absolute path"
    if text.startswith("//") or posixpath.normpath(text) != text:
        return "is not a normalised path (%s)" % posixpath.normpath(text)
    if re.search(r"\s", text):
        return "holds blanks, which split a path list in the unit"
    if '"' in text or "\\" in text:
        # Environment= and ExecStart= lines are unquoted by systemd: the service would get another path.
        return "holds a double quote or a backslash, which systemd would unquote in Environment= and ExecStart= lines"
    return None


def _pattern_problem(pattern, what: str):
    def check(text: str) -> str | None:
        return None if pattern.fullmatch(text) else "is not %s" % what
    return check


def _unit_name_problem(text: str) -> str | None:
    if not _UNIT_NAME.fullmatch(text) or text.startswith(("-", ".")) or ".." in text or len(text) > 200:
        return ("is not a unit name (letters, digits, ':', '_', '.', '-'; no '/', no '..', not starting with "
                "'-' or '.')")
    return None


_KINDS = {
    "line": _line_problem,
    "env": _env_problem,
    "path": _path_problem,
    "unit_name": _unit_name_problem,
    "user": _pattern_problem(_USER_NAME, "a user or group name (useradd: [a-z_][a-z0-9_-]*, 32 at most)"),
    "env_name": _pattern_problem(_ENV_NAME, "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
    "word": _pattern_problem(_WORD, "one word (letters, digits, '_', '.', ':', '/', '+', '-')"),
    "bearer_token": _pattern_problem(_BEARER_TOKEN, "a bearer token (letters, digits, '-', '.', '_', '~', '+', '/', then '=')"),
    "haproxy_name": _pattern_problem(_HAPROXY_NAME, "an HAProxy name (letters, digits, '_', '.', ':', '-')"),
    "resource_limit": _pattern_problem(_RESOURCE_LIMIT, "a resource limit (bytes with K/M/G/T, a percentage, or infinity)"),
}


def _as_text(value, variable: str) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise AnsibleFilterError("%s: expected a string or number, got %r" % (variable, type(value).__name__))
    return str(value)


def systemd_input_problems(checks) -> list:
    """One message per bad value, naming its variable and never showing the value (it may be a secret).
    checks: a list of {var, kind, value}; a list value checks each item, a dict value its keys and values
    (kind env: keys as env_name)."""
    problems = []
    for check in checks:
        var, kind, value = check["var"], check["kind"], check["value"]
        if kind not in _KINDS:
            raise AnsibleFilterError("systemd_input_problems: unknown kind %r for %s" % (kind, var))
        if isinstance(value, dict):
            items = [("%s key %r" % (var, k), "env_name" if kind == "env" else kind, k) for k in value]
            items += [("%s[%r]" % (var, k), kind, v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [("%s[%d]" % (var, i), kind, v) for i, v in enumerate(value)]
        else:
            items = [(var, kind, value)]
        for name, item_kind, item in items:
            if isinstance(item, (dict, list)) or item is None:
                problems.append("%s is not a string" % name)
                continue
            problem = _KINDS[item_kind](str(item))
            if problem:
                problems.append("%s %s" % (name, problem))
    return problems


def systemd_unit_value(value, variable: str = "value") -> str:
    """A value for one unit directive: refused if it could end or continue the line, specifiers escaped."""
    text = _as_text(value, variable)
    problem = _line_problem(text)
    if problem:
        raise AnsibleFilterError("%s %s; it cannot go into a systemd unit" % (variable, problem))
    return text.replace("%", "%%")


def systemd_env_line(value, name: str, variable: str | None = None) -> str:
    """NAME="value" as systemd's env-file parser (parse_env_file) reads back exactly."""
    variable = variable or name
    if not _ENV_NAME.fullmatch(str(name)):
        raise AnsibleFilterError("%s: %r is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                                 % (variable, name))
    text = _as_text(value, variable)
    problem = _env_problem(text)
    if problem:
        raise AnsibleFilterError("%s %s; it cannot go into an EnvironmentFile" % (variable, problem))
    return '%s="%s"' % (name, "".join(_ENV_ESCAPES.get(ch, ch) for ch in text))


class FilterModule:
    def filters(self):
        return {"systemd_command_line": systemd_command_line, "systemd_unit_value": systemd_unit_value,
                "systemd_env_line": systemd_env_line, "systemd_input_problems": systemd_input_problems}
