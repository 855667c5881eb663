"""audit_log on real ansible-playbook runs: private file, no_log names and secrets kept out, the fields an
auditor needs, an HMAC chain whose verifier finds each kind of tampering, concurrent runs, syslog forwarding."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.playbook import REPO, run_local_playbook

VERIFIER = REPO / "plugins" / "callback" / "audit_log.py"
KEY = "audit-test-key-0123456789abcdef"
SECRET = "hf_Sup3rS3cretT0ken0123456789"
PASSWORD = "Pw-item-s3cret-9876"

PLAYBOOK = """
- name: Audit probe
  hosts: localhost
  gather_facts: false
  vars:
    hf_token: %(secret)s
  tasks:
    - name: "Log in with {{ hf_token }}"
      ansible.builtin.command: echo {{ hf_token }}
      changed_when: true
      no_log: true
    - name: "Write a file named after {{ hf_token }}"
      ansible.builtin.file:
        path: "{{ work }}/file-{{ hf_token }}"
        state: touch
    - name: Touch the probe file
      ansible.builtin.file:
        path: "{{ work }}/probe"
        state: touch
    - name: Loop over users
      ansible.builtin.file:
        path: "{{ work }}/{{ item.name }}"
        state: touch
      loop: [{name: alice, password: %(password)s}, {name: bob}]
    - name: Act as the service user
      ansible.builtin.debug:
        msg: hello
      become: true
      become_user: svc
    - name: Skip on purpose
      ansible.builtin.command: "false"
      when: false
    - name: Fail loudly
      ansible.builtin.fail:
        msg: "disk full on /srv"
      ignore_errors: true
""" % {"secret": SECRET, "password": PASSWORD}


def verify(log: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERIFIER), "verify", str(log), *extra], capture_output=True, text=True,
                          env=dict(os.environ, AUTOGLM_AUDIT_KEY=KEY), timeout=60, check=False)


def play(tmp_path: Path, extra_vars: tuple = ()) -> tuple:
    playbook = tmp_path / "audit-probe.yml"
    playbook.write_text(PLAYBOOK)
    return run_local_playbook(playbook, tmp_path, extra_vars=("work=%s" % tmp_path, *extra_vars))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One run with a key and syslog forwarding, into a log that already existed with mode 0644."""
    work = tmp_path_factory.mktemp("audit")
    log = work / "audit.jsonl"
    log.touch(mode=0o644)
    os.chmod(log, 0o644)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTOGLM_AUDIT_KEY", KEY)
        env.setenv("AUTOGLM_AUDIT_SYSLOG_ADDRESS", "127.0.0.1:%d" % receiver.getsockname()[1])
        rc, _unused, output = play(work, ("ansible_host=127.0.0.1", "ansible_user=deployer"))
    assert rc == 0, output
    datagrams = []
    lines = log.read_text().splitlines()
    with contextlib.suppress(TimeoutError):  # fewer datagrams than lines: the syslog test says so
        while len(datagrams) < len(lines):
            datagrams.append(receiver.recv(65536).decode())
    receiver.close()
    return {"log": log, "output": output, "lines": lines, "records": [json.loads(line) for line in lines],
            "datagrams": datagrams}


def tasks(audited) -> dict:
    return {record["task"]: record for record in audited["records"] if record["event"] == "task"}


def test_log_is_private_and_a_wider_mode_is_tightened(audited):
    assert stat.S_IMODE(audited["log"].stat().st_mode) == 0o600
    assert "had mode 0644, now 0600" in audited["output"]


def test_new_log_and_generated_key_are_0600(tmp_path):
    rc, _unused, output = play(tmp_path)
    assert rc == 0, output
    log, key = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.key"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "generated %s" % key in output
    proc = subprocess.run([sys.executable, str(VERIFIER), "verify", str(log)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_world_writable_folder_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    playbook = tmp_path / "audit-probe.yml"
    playbook.write_text(PLAYBOOK)
    rc, _unused, output = run_local_playbook(playbook, shared, extra_vars=("work=%s" % tmp_path,))  # log: shared/audit.jsonl
    assert rc == 0, output
    assert not (shared / "audit.jsonl").exists()
    assert "writable by everyone" in output


def test_no_log_task_name_and_secrets_are_never_recorded(audited):
    text = "\n".join(audited["lines"])
    assert SECRET not in text and PASSWORD not in text
    assert SECRET not in (audited["log"].parent / "audit.jsonl.head").read_text()
    hidden = [record for record in audited["records"] if record.get("action") == "ansible.builtin.command"
              and record["result"] == "changed"]
    assert len(hidden) == 1
    assert hidden[0]["task"] == "(no_log task)" and hidden[0]["resource"] == {"host": "localhost"}
    assert "msg" not in hidden[0]


def test_secret_values_and_secret_keys_are_redacted_from_normal_tasks(audited):
    named = tasks(audited)["Write a file named after <redacted>"]
    assert named["resource"]["path"].endswith("/file-<redacted>")
    looped = tasks(audited)["Loop over users"]
    assert [item["path"].rsplit("/", 1)[1] for item in looped["resource"]["changed_items"]] == ["alice", "bob"]


def test_every_line_carries_the_fields_an_auditor_needs(audited):
    records = audited["records"]
    assert [record["seq"] for record in records] == list(range(1, len(records) + 1))
    assert len({record["run_id"] for record in records}) == 1
    for record in records:
        when = datetime.fromisoformat(record["time"])
        assert when.utcoffset().total_seconds() == 0 and record["time"].endswith("+00:00")
        assert record["playbook"] == "audit-probe.yml" and record["user"] and re.fullmatch(r"[0-9a-f]{64}", record["mac"])
    by_name = tasks(audited)
    probe = by_name["Touch the probe file"]
    assert probe["action"] == "ansible.builtin.file" and probe["result"] == "changed"
    assert probe["resource"] == {"host": "localhost", "path": str(audited["log"].parent / "probe")}
    assert probe["host"] == "localhost" and probe["address"] == "127.0.0.1"
    assert probe["remote_user"] == "deployer" and probe["become_user"] is None
    assert probe["play"] == "Audit probe"
    assert by_name["Act as the service user"]["become_user"] == "svc"
    assert by_name["Act as the service user"]["result"] == "ok"
    assert by_name["Skip on purpose"]["result"] == "skipped"
    assert by_name["Fail loudly"]["result"] == "failed" and by_name["Fail loudly"]["msg"] == "disk full on /srv"
    assert records[-1]["event"] == "summary"


def test_syslog_receives_the_same_lines(audited):
    # <134> is facility local0 (16) at info (6); the failure goes at warning (4): <132>.
    assert len(audited["datagrams"]) == len(audited["lines"])
    for line, datagram in zip(audited["lines"], audited["datagrams"]):
        priority, _unused, body = datagram.partition(">")
        assert body.rstrip("\x00") == "autoglm-audit: " + line
        expected = 132 if json.loads(line).get("result") == "failed" else 134
        assert priority == "<%d" % expected


def test_verify_passes_an_intact_log(audited):
    proc = verify(audited["log"])
    assert proc.returncode == 0, proc.stderr
    assert "intact, %d lines, 1 run(s)" % len(audited["lines"]) in proc.stdout
    assert audited["records"][0]["time"] in proc.stdout and audited["records"][-1]["time"] in proc.stdout


def _edit(lines):
    record = json.loads(lines[2])
    record["result"] = "ok"
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return lines, 3


def _edit_spacing(lines):
    lines[1] = lines[1].replace(",", ", ", 1)
    return lines, 2


def _swap(lines):
    lines[2], lines[3] = lines[3], lines[2]
    return lines, 3


def _delete_middle(lines):
    del lines[3]
    return lines, 4


def _insert_copy(lines):
    lines.insert(4, lines[1])
    return lines, 5


def _truncate_tail(lines):
    return lines[:-2], len(lines) - 1


@pytest.mark.parametrize("tamper", [_edit, _edit_spacing, _swap, _delete_middle, _insert_copy, _truncate_tail])
def test_verify_reports_the_first_bad_line(audited, tmp_path, tamper):
    log = tmp_path / "audit.jsonl"
    shutil.copy(audited["log"].parent / "audit.jsonl.head", tmp_path / "audit.jsonl.head")
    lines, bad = tamper(list(audited["lines"]))
    log.write_text("\n".join(lines) + "\n")
    proc = verify(log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("%s:%d:" % (log, bad)), proc.stderr


def test_verify_with_the_wrong_key_fails_on_line_one(audited):
    proc = subprocess.run([sys.executable, str(VERIFIER), "verify", str(audited["log"])], capture_output=True, text=True,
                          env=dict(os.environ, AUTOGLM_AUDIT_KEY="another-key-0123456789"), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("%s:1: MAC mismatch" % audited["log"])


def test_concurrent_runs_keep_one_chain(tmp_path):
    playbook = tmp_path / "audit-probe.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), AUTOGLM_AUDIT_LOG=str(tmp_path / "audit.jsonl"),
               AUTOGLM_AUDIT_KEY=KEY, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    command = ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable,
               "-e", "work=%s" % tmp_path, str(playbook)]
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _unused in range(3)]
    for run in runs:
        output, _unused = run.communicate(timeout=300)
        assert run.returncode == 0, output
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len({record["run_id"] for record in records}) == 3
    assert sum(record["event"] == "summary" for record in records) == 3
    assert [record.get("seq") for record in records] == list(range(1, len(records) + 1))
    proc = verify(tmp_path / "audit.jsonl")
    assert proc.returncode == 0, proc.stderr


def test_vaulted_values_are_cut_from_names_whatever_the_variable_is_called(tmp_path, monkeypatch):
    plaintext = "vaulted-conn-string-4242"
    password = tmp_path / "vault-pass"
    password.write_text("vault-test-password\n")
    encrypted = subprocess.run(["ansible-vault", "encrypt_string", "--vault-password-file", str(password), plaintext,
                                "--name", "db_conn"], capture_output=True, text=True, check=True).stdout
    playbook = tmp_path / "vaulted.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  vars:\n    %s\n  tasks:\n"
                        "    - name: \"Connect with {{ db_conn }}\"\n      ansible.builtin.debug:\n        msg: ok\n"
                        % encrypted.strip().replace("\n", "\n    "))
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    monkeypatch.setenv("AUTOGLM_AUDIT_KEY", KEY)
    rc, _unused, output = run_local_playbook(playbook, tmp_path)
    assert rc == 0, output
    text = (tmp_path / "audit.jsonl").read_text()
    assert plaintext not in text and "Connect with <redacted>" in text
