"""State after the docker_engine scenario: daemon.json merged by key, Docker live with it, a registry cache on role-node2.

side_effect.yml reran the role with nothing to change, on a broken daemon.json and after a hand edit, and left
its records in /var/tmp/autoglm-docker-test on role-node1.
"""
from __future__ import annotations

import json

import pytest

RECORD = "/var/tmp/autoglm-docker-test"
MIRROR = "http://role-node2:5000"


def on(host, name):
    if host.backend.get_hostname() != name:
        pytest.skip("%s only" % name)


def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def daemon_json(host):
    return json.loads(host.file("/etc/docker/daemon.json").content_string)


def test_nvidia_runtime_and_unrelated_keys_survive_adding_mirrors(host):
    on(host, "role-node1")
    config = daemon_json(host)
    assert config["runtimes"] == {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    assert config["features"] == {"buildkit": True} and config["labels"] == ["autoglm.lab=role-node1"]
    assert config["registry-mirrors"] == [MIRROR]  # the stale mirror was replaced
    # role-node2:5001 is the upstream registry that side_effect.yml pushes the test image to.
    assert config["insecure-registries"] == ["role-node2:5000", "role-node2:5001"]
    assert config["log-driver"] == "json-file" and config["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert "default-runtime" not in config


def test_docker_runs_with_the_merged_configuration(host):
    on(host, "role-node1")
    assert host.service("docker").is_running and host.service("docker").is_enabled
    info = docker_info(host)
    assert info["RegistryConfig"]["Mirrors"] == [MIRROR + "/"]
    assert info["Runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert "autoglm.lab=role-node1" in info["Labels"] and info["LoggingDriver"] == "json-file"


def test_the_first_change_kept_a_backup_of_the_prepared_file(host):
    on(host, "role-node1")
    backups = host.check_output("ls /etc/docker | grep '^daemon.json\\..*~$' || true").split()
    contents = [json.loads(host.file("/etc/docker/" + name).content_string) for name in backups]
    assert any(config.get("registry-mirrors") == ["http://stale-mirror.invalid:5000"] for config in contents), backups


def test_rerun_without_changes_does_not_restart_docker(host):
    on(host, "role-node1")
    t0 = int(host.file(RECORD + "/t0").content_string)
    t1 = int(host.file(RECORD + "/t1").content_string)
    assert t0 > 0 and t1 == t0


def test_prefetch_pulled_the_missing_image_through_the_cache(host):
    on(host, "role-node1")
    pushed = host.file(RECORD + "/pushed-id").content_string.strip()
    pulled = host.check_output("docker image inspect --format '{{.Id}}' role-node2:5000/library/tiny:1")
    assert pushed.startswith("sha256:") and pulled == pushed


def test_prefetch_left_the_present_image_alone(host):
    on(host, "role-node1")
    # It exists in no registry: had prefetch tried to pull it, the side effect would have failed.
    assert host.run("docker image inspect role-node2:5000/autoglm/local-only:1").rc == 0


def test_the_cache_stored_what_it_served(host):
    on(host, "role-node2")
    assert host.file("/var/lib/docker-registry/docker/registry/v2/repositories/library/tiny").is_directory


def test_broken_daemon_json_fails_clearly_and_is_not_written(host):
    on(host, "role-node1")
    msg = host.file(RECORD + "/broken-msg").content_string
    assert msg.startswith("/etc/docker/daemon.json is not valid JSON: Expecting ',' delimiter: line 3"), msg
    assert "Nothing was written" in msg
    after = host.file(RECORD + "/daemon.json.broken-after").content_string
    assert '["http://hand-edited.invalid:5000"]\n  "labels"' in after  # byte for byte what was broken


def test_hand_edit_of_managed_keys_is_reverted_with_a_restart(host):
    on(host, "role-node1")
    config = daemon_json(host)
    assert config["registry-mirrors"] == [MIRROR] and config["log-opts"]["max-file"] == "3"
    assert config["runtimes"]["nvidia"]["args"] == []
    t1 = int(host.file(RECORD + "/t1").content_string)
    t2 = int(host.file(RECORD + "/t2").content_string)
    assert t2 > t1
    assert docker_info(host)["RegistryConfig"]["Mirrors"] == [MIRROR + "/"]


def test_module_refuses_a_broken_file_at_any_path(host):
    on(host, "role-node1")
    host.run("printf '{\"debug\": true,}' > /tmp/broken-daemon.json")
    result = host.ansible("autoglm.deploy.docker_daemon_config",
                          json.dumps({"path": "/tmp/broken-daemon.json", "settings": {"debug": False}}), check=False)
    assert "is not valid JSON" in result["msg"] and "line 1 column" in result["msg"]
    assert host.file("/tmp/broken-daemon.json").content_string == '{"debug": true,}'


def test_registry_cache_proxies_the_upstream_on_node2(host):
    on(host, "role-node2")
    assert host.service("docker-registry").is_running and host.service("docker-registry").is_enabled
    assert host.socket("tcp://0.0.0.0:5000").is_listening or host.socket("tcp://:::5000").is_listening
    config = host.file("/etc/docker/registry/config.yml").content_string
    assert 'remoteurl: "http://127.0.0.1:5001"' in config
    assert not host.package("docker.io").is_installed


def test_node1_reaches_the_cache_it_lists_as_mirror(host):
    on(host, "role-node1")
    script = "import urllib.request as u; r = u.urlopen('%s/v2/', timeout=10); print(r.status, r.headers['Docker-Distribution-Api-Version'])"
    answer = host.check_output("python3 -c \"%s\"" % (script % MIRROR))
    assert answer == "200 registry/2.0"
