"""service_health's judgement of a unit's state (one poll of the service_unit scaffold's health wait): a failed,
stopped or start-limited unit, or a crash loop past max_restarts, is given up at once; activating is waited on."""
from __future__ import annotations

import pytest

from ansible_collections.autoglm.deploy.plugins.modules.service_health import judge, parse_show


def props(state, sub="running", result="success", restarts="0"):
    return {"ActiveState": state, "SubState": sub, "Result": result, "NRestarts": restarts}


@pytest.mark.parametrize(("unit", "max_restarts", "gave_up", "why"), [
    (props("active"), 2, False, ""),
    (props("activating", "start"), 2, False, ""),
    (props("activating", "auto-restart", "exit-code", "2"), 2, False, ""),
    (props("activating", "auto-restart", "exit-code", "3"), 2, True, "restarted 3 times"),
    (props("activating", "auto-restart", "exit-code", "30"), -1, False, ""),
    (props("failed", "failed", "exit-code"), -1, True, "failed (Result=exit-code)"),
    (props("failed", "failed", "start-limit-hit", "5"), -1, True, "start limit"),
    (props("inactive", "dead"), -1, True, "not running"),
])
def test_judge(unit, max_restarts, gave_up, why):
    got, text = judge(unit, max_restarts)
    assert got is gave_up and why in text


def test_parse_show_keeps_values_with_equals_signs():
    assert parse_show("ActiveState=active\nResult=success\nExecStart={ path=/x ; argv[]=a=b }\n\n") == {
        "ActiveState": "active", "Result": "success", "ExecStart": "{ path=/x ; argv[]=a=b }"}
