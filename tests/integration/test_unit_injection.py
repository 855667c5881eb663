"""Role variables cannot change the meaning of the unit or environment files they land in (issue 18, finding 3):
hostile values are refused as the roles' first task (check mode too) and by the templates themselves, naming the
variable; awkward but legal values reach the service exactly, read back by a model of systemd's env-file parser
(parse_env_file in src/basic/env-file.c; no systemd PID 1 here: molecule/inference_service verify reads the
real service's environment)."""
from __future__ import annotations

import json

import pytest
from support.playbook import run_local_playbook
from support.units import SERVICE_UNIT, render

from ansible_collections.autoglm.deploy.plugins.filter.systemd import systemd_input_problems

NEWLINE_UNIT = "tiny\n[Service]\nExecStartPre=+/bin/touch /tmp/pwned"

HOSTILE = [
    ("inference_service", "inference_service_served_model_name", NEWLINE_UNIT),
    ("inference_service", "inference_service_user", "svc\nExecStartPre=+/bin/id"),
    ("inference_service", "inference_service_unit_name", "../../tmp/evil"),
    ("inference_service", "inference_service_state_dir", "/var/lib/../../etc"),
    ("inference_service", "inference_service_api_key", "key\nLD_PRELOAD=/tmp/evil.so"),
    ("inference_service", "inference_service_hf_token", "hf_x\rPYTHONPATH=/tmp"),
    ("inference_service", "inference_service_environment", {"A": "1\nLD_PRELOAD=/tmp/evil.so"}),
    ("inference_service", "inference_service_environment", {"LD PRELOAD": "x"}),
    ("model_mirror", "model_mirror_token", "tok\nAUTOGLM_MIRROR_FAIL_FIRST=1000"),
    ("model_mirror", "model_mirror_service", "../evil"),
    ("model_mirror", "model_mirror_user", "m\nExecStartPre=+/bin/id"),
    ("model_mirror", "model_mirror_data_dir", "relative/data"),
    ("inference_service", "inference_service_memory_max", "90%\nExecStartPre=+/bin/id"),
    ("inference_service", "inference_service_ip_address_allow", ["10.0.0.0/8\nExecStartPre=+/bin/id"]),
    ("model_mirror", "model_mirror_tasks_max", "lots"),
    ("model_mirror", "model_mirror_ip_address_allow", ["10.0.0.0/8 any"]),
    # Quotes and backslashes in a path are unquoted by systemd in Environment= (PYTHONPATH=...) and ExecStart=.
    ("model_mirror", "model_mirror_install_dir", '/opt/"autoglm-mirror'),
    ("inference_service", "inference_service_state_dir", "/var/lib/autoglm\\x2dinference"),
]

PATH_QUOTING = ['/opt/"m"', "/opt/a\\b", "/opt/m\\"]


@pytest.mark.parametrize("value", PATH_QUOTING)
def test_a_path_with_a_quote_or_backslash_is_refused_naming_the_variable(value):
    problems = systemd_input_problems([{"var": "model_mirror_install_dir", "kind": "path", "value": value},
                                       {"var": "model_mirror_data_dir", "kind": "path", "value": "/srv/mirror"}])
    assert len(problems) == 1 and problems[0].startswith("model_mirror_install_dir "), problems
    assert ("double quote" if '"' in value else "backslash") in problems[0] and value not in problems[0]


def run_role(role, tmp_path, extra, check=True):
    playbook = tmp_path / "role.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.%s]\n" % role)
    base = {"inference_service_api_key": "k"} if role == "inference_service" else {}
    return run_local_playbook(playbook, tmp_path, extra_vars=(json.dumps(dict(base, **extra)),), check=check)


@pytest.mark.parametrize(("role", "var", "value"), HOSTILE, ids=[h[1] + str(i) for i, h in enumerate(HOSTILE)])
def test_hostile_value_is_refused_first_naming_the_variable(tmp_path, role, var, value):
    rc, report, output = run_role(role, tmp_path, {var: value})
    assert rc != 0, output
    tasks = report["plays"][0]["tasks"]
    failed = [t for t in tasks if any(r.get("failed") for r in t["hosts"].values())]
    assert failed, output
    # The first task after argument validation fails, before any task could write or probe anything.
    first = next(t for t in tasks if "argument" not in t["task"]["name"].lower())
    assert failed[0] is first, [t["task"]["name"] for t in tasks]
    message = json.dumps(failed[0]["hosts"])
    assert var in message
    if isinstance(value, str) and "\n" in value:
        assert value.split("\n", 1)[1] not in message  # the value (maybe a secret) is never echoed


def test_empty_api_key_is_refused_unless_allowed(tmp_path):
    rc, _report, output = run_role("inference_service", tmp_path, {"inference_service_api_key": ""})
    assert rc != 0 and "inference_service_allow_unauthenticated" in output


# (role, template, variable, hostile value, the variable the template's refusal names): the service_unit
# scaffold's template names its own input (the role's first task has already named the role's variable).
TEMPLATE_CASES = [
    ("inference_service", "service.unit.j2", "inference_service_served_model_name", NEWLINE_UNIT, None),
    ("inference_service", "service.unit.j2", "inference_service_user", "svc\nExecStartPre=+/bin/id", None),
    ("inference_service", "service.env.j2", "inference_service_api_key", "key\nLD_PRELOAD=/tmp/evil.so", None),
    ("inference_service", "service.env.j2", "inference_service_environment", {"A": "1\nPYTHONPATH=/tmp"}, None),
    ("model_mirror", SERVICE_UNIT, "model_mirror_user", "m\nExecStartPre=+/bin/id", "service_unit_user"),
    ("model_mirror", SERVICE_UNIT, "model_mirror_install_dir", "/opt/m\n[Service]", "service_unit_documentation"),
    ("model_mirror", "mirror.env.j2", "model_mirror_token", "tok\nAUTOGLM_MIRROR_FAIL_FIRST=1000", None),
]


@pytest.mark.parametrize(("role", "template", "var", "value", "named"), TEMPLATE_CASES,
                         ids=["%s-%s" % (c[1], c[2]) for c in TEMPLATE_CASES])
def test_template_itself_refuses_a_line_break(tmp_path, role, template, var, value, named):
    rc, output, text = render(tmp_path, role, template, {var: value})
    assert rc != 0 and (named or var) in output, text or output


def parse_env_file(text: str) -> dict:
    """systemd's parse_env_file_internal (env-file.c, v252) as a state machine, for EnvironmentFile=."""
    env, state, key, value, last_ws = {}, "pre_key", "", "", None
    newline, ws, need_escape = "\n\r", " \t\n\r", '"\\`$'

    def push():
        if key:
            env[key] = value

    for c in text + "\n":
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in ws:
                state, key, value, last_ws = "key", c, "", None
        elif state == "key":
            if c in newline:
                state = "pre_key"
            elif c == "=":
                state, key = "pre_value", key.rstrip(ws)
            else:
                key += c
        elif state == "pre_value":
            if c in newline:
                push()
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in ws:
                state, value, last_ws = "value", value + c, None
        elif state == "value":
            if c in newline:
                if last_ws is not None:
                    value = value[:last_ws]
                push()
                state = "pre_key"
            elif c == "\\":
                state, last_ws = "value_escape", None
            else:
                last_ws = (last_ws if last_ws is not None else len(value)) if c in ws else None
                value += c
        elif state == "value_escape":
            state = "value"
            if c not in newline:
                value += c
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in need_escape:
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in newline:
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"
    return env


AWKWARD = {
    "quotes": "it's \"quoted\"",
    "backslashes": "a\\b\\\\c\\",
    "dollar": "$HOME ${PATH} `id`",
    "blanks": "  padded\t ",
    "comment": "# not a comment ; nor this",
    "equals": "a=b=c",
    "unicode": "Grüße, 模型 🚀",
}


def test_parser_model_reads_what_systemd_documents():
    # Unquoted values lose surrounding blanks and backslashes: the reason every value is double-quoted.
    assert parse_env_file('A= x \nB=a\\b\nC="q\\"\\$"\n# c\nD=\'s\\\'\n') == {"A": "x", "B": "ab", "C": 'q"$', "D": "s\\"}


def test_environment_file_reads_back_exactly(tmp_path):
    extra = {"inference_service_backend": "transformers", "inference_service_api_key": AWKWARD["quotes"] + AWKWARD["backslashes"],
             "inference_service_hf_token": AWKWARD["blanks"], "inference_service_environment": AWKWARD}
    rc, output, text = render(tmp_path, "inference_service", "service.env.j2", extra)
    assert rc == 0, output
    env = parse_env_file(text)
    assert env["AUTOGLM_SERVE_API_KEY"] == extra["inference_service_api_key"]
    assert env["HF_TOKEN"] == AWKWARD["blanks"]
    assert {k: env[k] for k in AWKWARD} == AWKWARD
    assert env["HOME"] == "/var/lib/autoglm-inference" and env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(("backend", "key_env"), [("vllm", "VLLM_API_KEY"), ("transformers", "AUTOGLM_SERVE_API_KEY"),
                                                  ("sglang", None)])
def test_the_api_key_goes_to_the_variable_the_engine_reads(tmp_path, backend, key_env):
    # From the engine's descriptor; SGLang reads none (the role refuses a key for it before the template runs).
    rc, output, text = render(tmp_path, "inference_service", "service.env.j2",
                              {"inference_service_backend": backend, "inference_service_api_key": "k3y"})
    assert rc == 0, output
    keys = {k: v for k, v in parse_env_file(text).items() if v == "k3y"}
    assert keys == ({key_env: "k3y"} if key_env else {}), keys


def test_mirror_token_reads_back_exactly(tmp_path):
    token = ' "S3cret\\$tok`en" '
    rc, output, text = render(tmp_path, "model_mirror", "mirror.env.j2", {"model_mirror_token": token})
    assert rc == 0, output
    assert parse_env_file(text) == {"AUTOGLM_MIRROR_TOKEN": token}


def test_mirror_exec_start_is_an_argv_systemd_splits_back(tmp_path):
    patterns = ["org/it's-*", "50%-$HOME/*", "-dash"]
    rc, output, text = render(tmp_path, "model_mirror", SERVICE_UNIT,
                              {"model_mirror_protected_repos": patterns, "model_mirror_token": "t"})
    assert rc == 0, output
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    import shlex
    argv = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[len("ExecStart="):])]
    assert [a.split("=", 1)[1] for a in argv if a.startswith("--protected-repo=")] == patterns
    assert argv[:6] == ["/usr/bin/python3", "-B", "-s", "-m", "autoglm_mirror", "serve"]
