"""docker_daemon_config: real daemon.json files in tmp_path, the module run in a subprocess as Ansible does."""
from __future__ import annotations

import json
import os
import stat

import pytest

# What `nvidia-ctk runtime configure --runtime=docker` writes, plus keys another tool owns.
NVIDIA_CTK = {
    "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    "default-runtime": "nvidia",
    "features": {"buildkit": True},
    "registry-mirrors": ["https://old-mirror.example"],
    "debug": False,
}


@pytest.fixture
def daemon_json(tmp_path):
    def write(content, name="daemon.json"):
        path = tmp_path / "docker" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content, indent=4) + "\n")
        return path
    return write


@pytest.fixture
def configure(run_module):
    def run(path, settings, check_mode=False, diff=False, **extra):
        return run_module("docker_daemon_config", dict(path=str(path), settings=settings, **extra),
                          check_mode=check_mode, diff=diff)
    return run


def read(path):
    return json.loads(path.read_text())


def test_adding_mirrors_keeps_the_nvidia_runtime_and_unrelated_keys(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    result = configure(path, {"registry-mirrors": ["http://node3:5000"], "log-opts": {"max-size": "100m", "max-file": "3"}})
    assert result["changed"] is True, result
    assert result["changed_keys"] == ["log-opts", "registry-mirrors"]
    config = read(path)
    assert config["runtimes"] == NVIDIA_CTK["runtimes"]
    assert config["default-runtime"] == "nvidia" and config["features"] == {"buildkit": True} and config["debug"] is False
    assert config["registry-mirrors"] == ["http://node3:5000"]
    assert config["log-opts"] == {"max-size": "100m", "max-file": "3"}
    assert result["config"] == config
    # Existing keys keep their order; new keys come after them.
    assert list(config)[:5] == list(NVIDIA_CTK)


def test_runtimes_merge_deeply(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    configure(path, {"runtimes": {"crun": {"path": "/usr/bin/crun"}, "nvidia": {"runtimeArgs": ["--debug"]}}})
    runtimes = read(path)["runtimes"]
    assert runtimes["crun"] == {"path": "/usr/bin/crun"}
    assert runtimes["nvidia"] == {"args": [], "path": "nvidia-container-runtime", "runtimeArgs": ["--debug"]}


@pytest.mark.parametrize(("list_merge", "expected"), [
    ("replace", ["http://node3:5000", "https://old-mirror.example"]),
    ("union", ["https://old-mirror.example", "http://node3:5000"]),
])
def test_lists_are_replaced_or_unioned(daemon_json, configure, list_merge, expected):
    path = daemon_json(NVIDIA_CTK)
    result = configure(path, {"registry-mirrors": ["http://node3:5000", "https://old-mirror.example"]}, list_merge=list_merge)
    assert read(path)["registry-mirrors"] == expected
    assert result["changed"] is True
    again = configure(path, {"registry-mirrors": ["http://node3:5000", "https://old-mirror.example"]}, list_merge=list_merge)
    assert again["changed"] is False


def test_union_with_items_already_there_changes_nothing(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    before = path.stat().st_mtime_ns
    result = configure(path, {"registry-mirrors": ["https://old-mirror.example"]}, list_merge="union")
    assert result["changed"] is False and result["changed_keys"] == []
    assert path.stat().st_mtime_ns == before


def test_second_run_is_idempotent_and_leaves_the_file_alone(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    settings = {"registry-mirrors": ["http://node3:5000"], "data-root": "/srv/docker"}
    assert configure(path, settings)["changed"] is True
    written = path.read_text()
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    again = configure(path, settings, diff=True)
    assert again["changed"] is False and "diff" not in again
    assert path.read_text() == written and path.stat().st_ino == inode and path.stat().st_mtime_ns == mtime


def test_reformatting_by_hand_is_not_a_change(daemon_json, configure):
    path = daemon_json('{"registry-mirrors":["http://node3:5000"],\n   "debug":true}')
    result = configure(path, {"registry-mirrors": ["http://node3:5000"]})
    assert result["changed"] is False
    assert path.read_text() == '{"registry-mirrors":["http://node3:5000"],\n   "debug":true}'


def test_hand_edited_managed_key_is_reverted(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    settings = {"registry-mirrors": ["http://node3:5000"], "log-opts": {"max-file": "3"}}
    configure(path, settings)
    edited = read(path)
    edited["registry-mirrors"] = ["http://elsewhere:5000"]
    edited["log-opts"]["max-file"] = "9"
    path.write_text(json.dumps(edited))
    result = configure(path, settings)
    assert result["changed"] is True and result["changed_keys"] == ["log-opts", "registry-mirrors"]
    assert read(path)["registry-mirrors"] == ["http://node3:5000"] and read(path)["log-opts"] == {"max-file": "3"}


def test_absent_removes_only_the_named_keys(daemon_json, configure):
    path = daemon_json(dict(NVIDIA_CTK, runtimes={"nvidia": {"path": "nvidia-container-runtime"}, "crun": {"path": "crun"}}))
    result = configure(path, {"runtimes": {"nvidia": {}}, "default-runtime": "ignored", "not-there": 1}, state="absent")
    assert result["changed_keys"] == ["default-runtime", "runtimes"]
    config = read(path)
    assert config["runtimes"] == {"crun": {"path": "crun"}}
    assert "default-runtime" not in config and config["features"] == {"buildkit": True}
    assert configure(path, {"runtimes": {"nvidia": {}}, "default-runtime": "x"}, state="absent")["changed"] is False


def test_absent_drops_an_object_it_empties(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    configure(path, {"runtimes": {"nvidia": {}}, "registry-mirrors": []}, state="absent")
    config = read(path)
    assert "runtimes" not in config and "registry-mirrors" not in config
    assert config["default-runtime"] == "nvidia"  # not named: left alone even though it now dangles


def test_absent_on_a_missing_file_creates_nothing(tmp_path, configure):
    path = tmp_path / "docker" / "daemon.json"
    result = configure(path, {"registry-mirrors": []}, state="absent")
    assert result["changed"] is False and not path.exists() and not path.parent.exists()


def test_missing_file_and_directory_are_created_0644(tmp_path, configure):
    path = tmp_path / "etc-docker" / "daemon.json"
    result = configure(path, {"log-driver": "json-file"})
    assert result["changed"] is True
    assert read(path) == {"log-driver": "json-file"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_existing_mode_is_kept_and_mode_option_applies(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    os.chmod(path, 0o600)
    configure(path, {"debug": True})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    result = configure(path, {"debug": True}, mode="0644")
    assert result["changed"] is True and stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(("content", "where"), [
    ('{\n  "registry-mirrors": ["http://a:5000"]\n  "debug": true\n}\n', 'line 3 column 3'),
    ('{"runtimes": {"nvidia": {"path": "nvidia-container-runtime",}}}', 'line 1 column'),
    ("registry-mirrors: [http://a]\n", "line 1 column 1"),
])
def test_syntax_error_fails_clearly_and_writes_nothing(daemon_json, configure, content, where):
    path = daemon_json(content)
    mtime = path.stat().st_mtime_ns
    result = configure(path, {"registry-mirrors": ["http://node3:5000"]}, backup=True)
    assert result["failed"] is True
    assert result["msg"].startswith("%s is not valid JSON" % path)
    assert where in result["msg"] and "Nothing was written" in result["msg"]
    assert path.read_text() == content and path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(path.parent)) == ["daemon.json"]  # no temp file, no backup of a file we did not touch


def test_line_of_the_syntax_error_is_quoted(daemon_json, configure):
    path = daemon_json('{\n  "debug": true,\n  "log-opts": {"max-file": 3,}\n}\n')
    msg = configure(path, {"debug": False})["msg"]
    assert 'line 3 reads: "log-opts": {"max-file": 3,}' in msg


def test_top_level_that_is_not_an_object_is_refused(daemon_json, configure):
    path = daemon_json('["registry-mirrors"]')
    result = configure(path, {"debug": True})
    assert result["failed"] is True and "must hold a JSON object at the top level, it holds a list" in result["msg"]
    assert path.read_text() == '["registry-mirrors"]'


def test_empty_file_counts_as_empty_object(daemon_json, configure):
    path = daemon_json("\n")
    assert configure(path, {"debug": True})["changed"] is True
    assert read(path) == {"debug": True}


@pytest.mark.parametrize(("settings", "message"), [
    ({"registry-mirrors": "http://node3:5000"}, "settings.registry-mirrors must be a list of strings"),
    ({"log-opts": {"max-file": 3}}, 'write max-file: "3"'),
    ({"runtimes": {"nvidia": "nvidia-container-runtime"}}, "settings.runtimes must map runtime names to objects"),
    ({"data-root": None}, "settings.data-root is null"),
    ({"runtimes": {"nvidia": {"path": None}}}, "settings.runtimes.nvidia.path is null"),
])
def test_settings_docker_would_reject_are_refused_before_writing(daemon_json, configure, settings, message):
    path = daemon_json(NVIDIA_CTK)
    original = path.read_text()
    result = configure(path, settings)
    assert result["failed"] is True and message in result["msg"]
    assert path.read_text() == original


def test_check_mode_reports_and_writes_nothing(daemon_json, configure, tmp_path):
    path = daemon_json(NVIDIA_CTK)
    original = path.read_text()
    result = configure(path, {"registry-mirrors": ["http://node3:5000"]}, check_mode=True, diff=True)
    assert result["changed"] is True and result["config"]["registry-mirrors"] == ["http://node3:5000"]
    assert path.read_text() == original
    missing = tmp_path / "new" / "daemon.json"
    assert configure(missing, {"debug": True}, check_mode=True)["changed"] is True
    assert not missing.parent.exists()


def test_diff_holds_the_text_before_and_after(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    original = path.read_text()
    result = configure(path, {"registry-mirrors": ["http://node3:5000"]}, diff=True)
    diff = result["diff"]
    assert diff["before"] == original and diff["after"] == path.read_text()
    assert diff["before_header"] == diff["after_header"] == str(path)
    assert '"http://node3:5000"' in diff["after"] and '"http://node3:5000"' not in diff["before"]
    assert json.loads(diff["after"])["runtimes"] == NVIDIA_CTK["runtimes"]


def test_backup_keeps_the_previous_file(daemon_json, configure):
    path = daemon_json(NVIDIA_CTK)
    original = path.read_text()
    result = configure(path, {"debug": True}, backup=True)
    backup = result["backup_file"]
    assert os.path.dirname(backup) == str(path.parent)
    with open(backup) as handle:
        assert handle.read() == original


@pytest.mark.parametrize(("validator", "written"), [("/bin/true %s", True), ("/bin/false %s", False)])
def test_validate_command_gates_the_write(daemon_json, configure, validator, written):
    path = daemon_json(NVIDIA_CTK)
    result = configure(path, {"debug": True}, validate=validator)
    assert read(path)["debug"] is written
    if not written:
        assert result["failed"] is True and "validation of the new" in result["msg"] and "nothing was written" in result["msg"]
    assert sorted(os.listdir(path.parent)) == ["daemon.json"]


def test_validate_sees_the_new_content(daemon_json, configure, tmp_path):
    path = daemon_json(NVIDIA_CTK)
    seen = tmp_path / "seen.json"
    configure(path, {"debug": True}, validate="/bin/cp %%s %s" % seen)
    assert json.loads(seen.read_text())["debug"] is True
