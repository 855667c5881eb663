"""python_venv_verify on a real venv built from a tiny local wheelhouse: RECORD-based detection and in-place repair."""
from __future__ import annotations

import subprocess
import sys

import pytest
from support.wheelhouse import build_wheels, isolated_pip_env

PROJECTS = [("tinyapp", "1.0", ("tinydep==2.0",), ""), ("tinydep", "2.0", (), "")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    wheels = root / "wheels"
    build_wheels(root / "src", wheels, PROJECTS)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(wheels), "tinyapp==1.0"], check=True, env=dict(isolated_pip_env(), PATH="/usr/bin:/bin"))
    return venv, wheels


@pytest.fixture
def venv(built):
    return built


def site(venv):
    return next(venv.glob("lib/python*/site-packages"))


def run(run_module, venv, wheels, **extra):
    args = dict(path=str(venv), no_index=True, find_links=[str(wheels)], timeout=5, retries=0)
    check_mode = extra.pop("check_mode", False)
    diff = extra.pop("diff", False)
    args.update(extra)
    return run_module("python_venv_verify", args, check_mode=check_mode, diff=diff, env=isolated_pip_env(), timeout=180)


def test_intact_venv_is_unchanged(run_module, venv):
    result = run(run_module, *venv)
    assert result["_rc"] == 0 and result["changed"] is False, result
    assert result["distributions"] >= 3 and result["files_checked"] > 0 and result["broken"] == {}


def test_deleted_file_is_reported_in_check_mode_and_repaired_once(run_module, venv):
    path, wheels = venv
    target = site(path) / "tinydep" / "__init__.py"
    target.unlink()
    check = run(run_module, path, wheels, check_mode=True, diff=True)
    assert check["changed"] is True and check["repaired"] == ["tinydep==2.0"], check
    assert check["broken"] == {"tinydep==2.0": ["tinydep/__init__.py: missing"]}
    assert "tinydep/__init__.py: missing" in check["diff"]["before"]
    assert not target.exists(), "check mode must not repair"

    fixed = run(run_module, path, wheels)
    assert fixed["_rc"] == 0 and fixed["changed"] is True and fixed["repaired"] == ["tinydep==2.0"], fixed
    assert target.read_text().startswith("__version__ = '2.0'")
    again = run(run_module, path, wheels)
    assert again["changed"] is False and again["repaired"] == []


@pytest.mark.parametrize("check, found", [("size", False), ("sha256", True)])
def test_same_size_corruption_needs_sha256(run_module, venv, check, found):
    path, wheels = venv
    target = site(path) / "tinyapp" / "__init__.py"
    original = target.read_bytes()
    target.write_bytes(original.replace(b"1.0", b"9.9"))
    try:
        result = run(run_module, path, wheels, check=check, check_mode=True)
        assert result["changed"] is found, result
        if found:
            assert result["broken"] == {"tinyapp==1.0": ["tinyapp/__init__.py: sha256 differs from RECORD"]}
    finally:
        target.write_bytes(original)


def test_truncated_file_is_caught_by_size_and_repair_off_fails_naming_it(run_module, venv):
    path, wheels = venv
    target = site(path) / "tinyapp" / "__init__.py"
    original = target.read_bytes()
    target.write_bytes(b"")
    try:
        result = run(run_module, path, wheels, repair=False)
        assert result.get("failed") and "tinyapp==1.0" in result["msg"] and "repair" in result["msg"], result
        assert result["broken"]["tinyapp==1.0"][0].startswith("tinyapp/__init__.py: size 0, RECORD says")
    finally:
        target.write_bytes(original)


def test_a_missing_source_fails_naming_the_package(run_module, venv, tmp_path):
    path, _unused = venv
    target = site(path) / "tinydep" / "__init__.py"
    original = target.read_bytes()
    target.unlink()
    try:
        result = run(run_module, path, tmp_path)
        assert result.get("failed") and "reinstalling tinydep==2.0" in result["msg"], result
        assert "tinydep" in result["msg"] and str(tmp_path) in result["msg"]
    finally:
        target.write_bytes(original)


def test_not_a_venv_is_refused(run_module, tmp_path):
    result = run_module("python_venv_verify", dict(path=str(tmp_path / "nope")))
    assert result.get("failed") and "is not a venv folder" in result["msg"]
