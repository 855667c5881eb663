#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_health
short_description: One poll of a systemd service - its unit's state and its HTTP health answer
version_added: "0.1.0"
description:
  - Reads the unit's C(ActiveState), C(SubState), C(Result) and C(NRestarts) (C(systemctl show)), then, while the
    unit is running, asks O(url) once. Meant for C(until) (see the example) - the service_unit role's health wait.
  - RV(healthy) is true when the unit is active and O(url) answered 200; a 200 from another process that holds
    the port while the unit itself is down is not health.
  - RV(gave_up) is true when waiting longer cannot help - the unit is C(failed) (a start limit hit is one) or
    C(inactive), or it restarted more than O(max_restarts) times since it was started - so the wait stops at once
    instead of polling until its timeout.
  - RV(journal) holds the unit's last O(journal_lines) journal lines whenever it is not healthy.
options:
  unit:
    description: The systemd unit, with or without its C(.service) suffix.
    type: str
    required: true
  url:
    description: The health URL, asked with GET from the node itself. Empty - the unit's state alone decides.
    type: str
    default: ""
  ca_path:
    description: PEM file of the CA that issued the service's certificate (https); empty - the system's CAs.
    type: path
  validate_certs:
    description: Check the server's certificate (https); false for a self-signed one the node has no CA for.
    type: bool
    default: true
  timeout:
    description: Seconds one request may take.
    type: int
    default: 10
  max_restarts:
    description: Automatic restarts (C(NRestarts)) after which a crash loop counts as given up; -1 - no limit.
    type: int
    default: -1
  journal_lines:
    description: Journal lines returned in RV(journal) when the service is not healthy.
    type: int
    default: 50
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Reads only; there is nothing to diff.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Wait until the mirror answers, stopping as soon as its unit fails
  autoglm.deploy.service_health:
    unit: autoglm-mirror
    url: http://127.0.0.1:8090/health
    max_restarts: 2
  register: health
  until: health.healthy or health.gave_up
  retries: 30
  delay: 2
"""

RETURN = r"""
healthy:
  description: The unit is active and O(url) answered 200 (or O(url) is empty).
  returned: always
  type: bool
gave_up:
  description: The unit failed, stopped, or restarted more than O(max_restarts) times; waiting cannot help.
  returned: always
  type: bool
status:
  description: HTTP status of the answer; 0 when there was none (not asked, refused, timed out, TLS error).
  returned: always
  type: int
active_state:
  description: C(ActiveState) of the unit (C(active), C(activating), C(failed), ...).
  returned: always
  type: str
sub_state:
  description: C(SubState) of the unit (C(running), C(auto-restart), ...).
  returned: always
  type: str
result:
  description: C(Result) of the unit's last run (C(success), C(exit-code), C(start-limit-hit), ...).
  returned: always
  type: str
n_restarts:
  description: Automatic restarts since the unit was last started.
  returned: always
  type: int
msg:
  description: What the poll found, in words.
  returned: always
  type: str
journal:
  description: The unit's last O(journal_lines) journal lines.
  returned: when not healthy
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

_PROPERTIES = ("ActiveState", "SubState", "Result", "NRestarts")


def parse_show(text: str) -> dict:
    """KEY=value lines of `systemctl show` as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def restarts_of(props: dict) -> int:
    value = props.get("NRestarts", "")
    return int(value) if value.isdigit() else 0


def judge(props: dict, max_restarts: int) -> tuple:
    """(gave_up, why) from the unit's properties."""
    state, result, restarts = props.get("ActiveState", ""), props.get("Result", ""), restarts_of(props)
    if result == "start-limit-hit":
        return True, "the unit hit its start limit (systemctl reset-failed clears it)"
    if state == "failed":
        return True, "the unit failed (Result=%s)" % (result or "?")
    if state == "inactive":
        return True, "the unit is not running (inactive, Result=%s)" % (result or "?")
    if max_restarts >= 0 and restarts > max_restarts:
        return True, "the unit restarted %d times since it was started (crash loop)" % restarts
    return False, ""


def ask(url: str, ca_path: str | None, validate_certs: bool, timeout: int) -> tuple:
    """(status, problem) of one GET; status 0 when there was no HTTP answer."""
    try:
        answer = open_url(url, method="GET", ca_path=ca_path, validate_certs=validate_certs,
                          timeout=timeout, follow_redirects="none")
        return answer.getcode(), ""
    except Exception as exc:  # every failure of one poll is "no answer yet"
        code = getattr(exc, "code", None)
        if isinstance(code, int):
            return code, "answered " + str(code)
        return 0, "no answer (%s)" % (getattr(exc, "reason", None) or exc)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            unit=dict(type="str", required=True),
            url=dict(type="str", default=""),
            ca_path=dict(type="path"),
            validate_certs=dict(type="bool", default=True),
            timeout=dict(type="int", default=10),
            max_restarts=dict(type="int", default=-1),
            journal_lines=dict(type="int", default=50),
        ),
        supports_check_mode=True,
    )
    unit, url = module.params["unit"], module.params["url"]
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--property=" + ",".join(_PROPERTIES), "--", unit])
    if rc != 0:
        module.fail_json(msg="systemctl show %s failed: %s" % (unit, (err or out).strip()))
    props = parse_show(out)
    gave_up, why = judge(props, module.params["max_restarts"])
    status, problem = 0, ""
    if not gave_up and props.get("ActiveState") == "active" and url:
        status, problem = ask(url, module.params["ca_path"], module.params["validate_certs"], module.params["timeout"])
    healthy = not gave_up and props.get("ActiveState") == "active" and (status == 200 or not url)
    if healthy:
        msg = "active and healthy" if url else "active"
    elif gave_up:
        msg = why
    elif props.get("ActiveState") != "active":
        msg = "the unit is %s (%s)" % (props.get("ActiveState", "?"), props.get("SubState", "?"))
    else:
        msg = "%s %s" % (url, problem)
    result = dict(changed=False, healthy=healthy, gave_up=gave_up, status=status, msg=msg,
                  active_state=props.get("ActiveState", ""), sub_state=props.get("SubState", ""),
                  result=props.get("Result", ""), n_restarts=restarts_of(props))
    if not healthy:
        journalctl = module.get_bin_path("journalctl")
        if journalctl:
            _rc, journal, _err = module.run_command([journalctl, "-u", unit, "-n", str(module.params["journal_lines"]),
                                                     "--no-pager"])
            result["journal"] = journal
        else:
            result["journal"] = "(journalctl not found)"
    module.exit_json(**result)


if __name__ == "__main__":
    main()
