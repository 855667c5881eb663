"""nvidia_driver_info in a real subprocess: recorded module version files, a package database answer."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

RECORDED = Path(__file__).resolve().parents[3] / "fixtures" / "nvidia-driver"


@pytest.fixture
def dpkg_answers(tmp_path):
    """A PATH holding a dpkg-query that prints what a real one prints for an installed package (no
    NVIDIA package can be installed here); None removes the package from that database."""
    def make(version: str | None, status: str = "ii "):
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        script = bindir / "dpkg-query"
        if version is None:
            body = 'echo "dpkg-query: no packages found matching $5" >&2; exit 1'
        else:
            body = "printf '%%s' '%s|%s'" % (status, version)
        script.write_text("#!/bin/sh\n%s\n" % body)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return {"PATH": "%s:%s" % (bindir, os.environ["PATH"])}
    return make


def run(run_module, env, **args):
    args.setdefault("package", "nvidia-open-580")
    args.setdefault("sysfs_root", "/nonexistent")
    result = run_module("nvidia_driver_info", args, env=env)
    assert result["_rc"] == 0, result
    assert result["changed"] is False
    return result


def test_loaded_module_equals_installed_package(run_module, dpkg_answers):
    result = run(run_module, dpkg_answers("580.95.05-1", "hi "),
                 loaded_version_file=str(RECORDED / "proc-version-open-580.txt"))
    assert result["installed_version"] == "580.95.05" and result["installed_package_version"] == "580.95.05-1"
    assert result["loaded_version"] == "580.95.05" and result["loaded_flavour"] == "open"
    assert result["versions_match"] is True
    assert result["reboot_required"] is False and result["reboot_reasons"] == []


def test_upgrade_without_reboot_is_a_version_mismatch(run_module, dpkg_answers):
    result = run(run_module, dpkg_answers("580.105.08-1"),
                 loaded_version_file=str(RECORDED / "proc-version-open-580.txt"))
    assert result["versions_match"] is False and result["reboot_required"] is True
    assert "580.95.05" in result["reboot_reasons"][0] and "580.105.08" in result["reboot_reasons"][0]


def test_sysfs_module_version_is_the_fallback(run_module, dpkg_answers, tmp_path):
    sysfs = tmp_path / "sys"
    (sysfs / "module" / "nvidia").mkdir(parents=True)
    (sysfs / "module" / "nvidia" / "version").write_text((RECORDED / "sys-module-nvidia-version.txt").read_text())
    result = run(run_module, dpkg_answers("580.95.05-1"),
                 loaded_version_file=str(tmp_path / "absent"), sysfs_root=str(sysfs))
    assert result["loaded_version"] == "580.95.05"
    assert result["loaded_version_source"] == str(sysfs / "module" / "nvidia" / "version")
    assert result["versions_match"] is True


def test_nouveau_bound_card_requires_a_reboot(run_module, dpkg_answers, tmp_path):
    result = run(run_module, dpkg_answers("580.95.05-1"), loaded_version_file=str(tmp_path / "absent"),
                 nouveau_devices=["0000:3b:00.0"])
    assert result["loaded_version"] is None and result["reboot_required"] is True
    assert result["reboot_reasons"] == [
        "nouveau is bound to 0000:3b:00.0; it is blacklisted now and goes away with a reboot"]


def test_package_not_installed(run_module, dpkg_answers):
    result = run(run_module, dpkg_answers(None), loaded_version_file=str(RECORDED / "proc-version-open-580.txt"))
    assert result["installed_version"] is None and result["versions_match"] is False
    assert result["reboot_required"] is False


def test_removed_package_with_config_left_is_not_installed(run_module, dpkg_answers):
    result = run(run_module, dpkg_answers("580.95.05-1", "rc "))
    assert result["installed_version"] is None


def test_real_dpkg_query_for_a_package_that_is_not_installed(run_module):
    if not Path("/usr/bin/dpkg-query").exists():
        pytest.skip("no dpkg database on this machine")
    result = run(run_module, None, package="nvidia-open-580-autoglm-never-installed")
    assert result["installed_version"] is None and result["installed_package_version"] is None


def test_unknown_package_manager_is_refused(run_module):
    result = run_module("nvidia_driver_info", {"package": "x", "package_manager": "zypper"})
    assert result["_rc"] != 0 and "zypper" in result["msg"] and "package_manager" in result["msg"]
