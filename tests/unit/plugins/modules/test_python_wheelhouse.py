"""python_wheelhouse downloads a requirements set once into a reusable set directory."""
from __future__ import annotations

import os

import pytest
from support.wheelhouse import build_wheels, isolated_pip_env

PROJECTS = [("tinyapp", "1.0", ("tinydep==2.0",), ""), ("tinydep", "2.0", (), ""), ("tinyother", "3.0", (), "")]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheels")
    build_wheels(root / "src", root / "wheels", PROJECTS)
    return str(root / "wheels")


@pytest.fixture
def download(run_module, source, tmp_path):
    def run(requirements, check_mode=False, **extra):
        args = dict(path=str(tmp_path / "wheelhouse"), requirements=requirements, no_index=True,
                    find_links=[source], retries=0)
        args.update(extra)
        return run_module("python_wheelhouse", args, check_mode=check_mode, env=isolated_pip_env(), timeout=300)
    return run


def test_downloads_once_with_dependencies(download, tmp_path):
    planned = download(["tinyapp==1.0"], check_mode=True)
    assert planned["changed"] and not os.path.exists(planned["path"])
    first = download(["tinyapp==1.0"])
    assert first["_rc"] == 0, first.get("msg")
    assert first["changed"] and first["pip_runs"] == 1 and first["python_version"] == "3.11"
    assert first["files"] == ["tinyapp-1.0-py3-none-any.whl", "tinydep-2.0-py3-none-any.whl"]
    assert sorted(os.listdir(first["path"])) == sorted([*first["files"], "manifest.json", "requirements.txt"])
    again = download(["tinyapp==1.0"])
    assert again["changed"] is False and again["pip_runs"] == 0 and again["path"] == first["path"]


def test_cross_target_uses_binary_wheels_for_that_python(download):
    result = download(["tinyapp==1.0"], python_version="3.12", platforms=["manylinux_2_28_x86_64"])
    assert result["_rc"] == 0, result.get("msg")
    assert result["python_version"] == "3.12" and "tinydep-2.0-py3-none-any.whl" in result["files"]
    native = download(["tinyapp==1.0"])
    assert native["path"] != result["path"]  # the target is part of the hash


def test_missing_package_is_named_and_leaves_no_set(download, tmp_path):
    bad = download(["tinyapp==1.0", "no-such-package==1.0"])
    assert bad["_rc"] != 0 and bad["package"] == "no-such-package"
    assert "No matching distribution found for no-such-package==1.0" in bad["msg"]
    assert os.listdir(tmp_path / "wheelhouse") == []  # neither the set nor its temporary directory


def test_old_sets_are_pruned(download):
    first = download(["tinyapp==1.0"], keep=2)
    second = download(["tinyother==3.0"], keep=2)
    third = download(["tinydep==2.0"], keep=2)
    assert third["pruned"] == [first["path"]] and os.path.isdir(second["path"])
