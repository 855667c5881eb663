"""State on the nodes after converge (580.95.05 pinned), idempotence, and role-node1's upgrade by pin (580.105.08).

role-node1: recorded HGX H100 (NVSwitch) with a loaded 580.95.05 module; role-node2: cards bound to nouveau;
role-node3: the mirror, no GPU (skipped by the role).
"""
from __future__ import annotations

import json

import pytest

MIRROR = "http://role-node3:8080"
DRIVER_PACKAGES = ["nvidia-open-580", "nvidia-persistenced"]


def name(host) -> str:
    return host.backend.get_hostname()


def gpu_node(host) -> None:
    if name(host) == "role-node3":
        pytest.skip("role-node3 has no GPU")


def dpkg(host, package: str) -> tuple[str, str]:
    """(version, status abbreviation: 'hi' = held and installed) of an installed package."""
    out = host.check_output("dpkg-query -W -f '${Version} ${db:Status-Abbrev}' %s", package)
    version, status = out.split(" ", 1)
    return version, status.strip()


def local_fact(host) -> dict:
    return json.loads(host.file("/etc/ansible/facts.d/nvidia_driver.fact").content_string)


def expected_driver(host) -> str:
    return "580.105.08-1" if name(host) == "role-node1" else "580.95.05-1"


def test_no_node_was_rebooted(host):
    assert host.file("/run/autoglm-boot-marker").exists


def test_repositories_are_signed_by_their_own_key(host):
    gpu_node(host)
    for repo, path in (("nvidia-cuda", "/compute/cuda/repos/debian12/x86_64/"),
                       ("nvidia-container-toolkit", "/libnvidia-container/stable/deb/amd64/")):
        sources = host.file("/etc/apt/sources.list.d/%s.sources" % repo).content_string
        assert "URIs: %s%s\n" % (MIRROR, path) in sources
        assert "Signed-By: /etc/apt/keyrings/%s.asc\n" % repo in sources
        assert host.file("/etc/apt/keyrings/%s.asc" % repo).content_string.startswith(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    # apt trusts the mirror through that key alone: no unauthenticated sources, no key in trusted.gpg.d.
    update = host.run("apt-get update -o APT::Update::Error-Mode=any")
    assert update.rc == 0, update.stderr
    assert not host.run("ls /etc/apt/trusted.gpg.d/ | grep -i nvidia").stdout


def test_driver_packages_at_the_pinned_version_and_held(host):
    gpu_node(host)
    for package in DRIVER_PACKAGES:
        assert dpkg(host, package) == (expected_driver(host), "hi")


def test_the_pin_keeps_apt_from_moving_the_driver(host):
    # role-node2 is pinned to 580.95.05 while the mirror also offers 580.105.08.
    if name(host) != "role-node2":
        pytest.skip("role-node2 keeps the first pin")
    policy = host.check_output("apt-cache policy nvidia-open-580")
    assert "Candidate: 580.95.05-1" in policy and "580.105.08-1 500" in policy
    upgrade = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert "nvidia" not in upgrade.replace("nvidia-open-580 nvidia-persistenced", "")


def test_upgrade_by_changing_the_pin(host):
    if name(host) != "role-node1":
        pytest.skip("role-node1 is upgraded by side_effect")
    log = host.file("/var/log/dpkg.log").content_string
    assert "upgrade nvidia-open-580:amd64 580.95.05-1 580.105.08-1" in log
    assert "upgrade nvidia-fabricmanager-580:amd64 580.95.05-1 580.105.08-1" in log
    assert "Pin: version 580.105.08-*" in host.file("/etc/apt/preferences.d/nvidia-driver.pref").content_string


def test_nouveau_is_blacklisted(host):
    gpu_node(host)
    blacklist = host.file("/etc/modprobe.d/blacklist-nouveau.conf").content_string
    assert "blacklist nouveau\n" in blacklist and "options nouveau modeset=0\n" in blacklist


def test_persistenced_enabled_and_started_only_without_a_pending_reboot(host):
    gpu_node(host)
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    # role-node1 started it at 580.95.05 before its upgrade; role-node2 waits for the reboot that unbinds nouveau.
    assert service.is_running is (name(host) == "role-node1")


def test_fabric_manager_only_where_nvswitches_are(host):
    gpu_node(host)
    if name(host) == "role-node1":
        assert dpkg(host, "nvidia-fabricmanager-580") == ("580.105.08-1", "hi")
        assert host.service("nvidia-fabricmanager").is_enabled
    else:
        assert host.run("dpkg-query -W nvidia-fabricmanager-580").rc != 0


def test_cuda_toolkit_on_login_shell_paths(host):
    gpu_node(host)
    assert dpkg(host, "cuda-toolkit-12-8") == ("12.8.1-1", "hi")
    env = host.check_output("bash -lc 'echo $CUDA_HOME; command -v nvcc; echo $LD_LIBRARY_PATH'").splitlines()
    assert env[0] == "/usr/local/cuda-12.8"
    assert env[1] == "/usr/local/cuda-12.8/bin/nvcc"
    assert env[2].split(":")[0] == "/usr/local/cuda-12.8/lib64"


def test_container_toolkit_pinned_and_held(host):
    gpu_node(host)
    assert dpkg(host, "nvidia-container-toolkit") == ("1.17.8-1", "hi")
    assert "1.17.8" in host.check_output("nvidia-ctk --version")


def test_reboot_required_is_reported_not_done(host):
    gpu_node(host)
    fact = local_fact(host)
    assert fact["reboot_required"] is True
    if name(host) == "role-node1":
        # The upgrade left the 580.95.05 module loaded: the Open-AutoGLM "version mismatch".
        assert fact["installed_version"] == "580.105.08" and fact["loaded_version"] == "580.95.05"
        assert fact["fabricmanager"] is True
        assert any("580.95.05" in r and "580.105.08" in r for r in fact["reboot_reasons"])
    else:
        assert fact["installed_version"] == "580.95.05" and fact["loaded_version"] is None
        assert fact["fabricmanager"] is False
        assert fact["reboot_reasons"] == [
            "nouveau is bound to 0000:3b:00.0; it is blacklisted now and goes away with a reboot"]


def test_driver_info_compares_loaded_module_and_package(host):
    if name(host) != "role-node1":
        pytest.skip("role-node1 has the recorded loaded module")
    args = {"package": "nvidia-open-580", "loaded_version_file": "/opt/autoglm-fixtures/loaded-module/version"}
    info = host.ansible("autoglm.deploy.nvidia_driver_info", json.dumps(args), check=True)
    assert info["installed_package_version"] == "580.105.08-1" and info["loaded_version"] == "580.95.05"
    assert info["loaded_flavour"] == "open" and info["versions_match"] is False


def test_host_without_gpu_is_skipped(host):
    if name(host) != "role-node3":
        pytest.skip("role-node3 only")
    assert not host.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists
    assert not host.file("/etc/modprobe.d/blacklist-nouveau.conf").exists
    assert not host.file("/etc/ansible/facts.d/nvidia_driver.fact").exists
    assert host.run("dpkg-query -W nvidia-open-580").rc != 0
