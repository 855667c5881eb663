"""job_progress reads what a running job shows: model_fetch's status file, or pip's log (PIP_LOG) and the venv."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from support.wheelhouse import build_wheels, isolated_pip_env

from ansible_collections.autoglm.deploy.plugins.modules import job_progress

PROJECTS = [("tinyapp", "1.0", ("tinydep==2.0",), ""), ("tinydep", "2.0", (), "")]


@pytest.fixture(scope="module")
def pip_run(tmp_path_factory):
    """A real install of two wheels with PIP_LOG set: the log and the venv it filled."""
    root = tmp_path_factory.mktemp("pip-log")
    build_wheels(root / "src", root / "wheels", PROJECTS)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = root / "pip.log"
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", "--no-index",
                    "--find-links", str(root / "wheels"), "tinyapp==1.0"], check=True, capture_output=True,
                   env=dict(os.environ, **isolated_pip_env(), PIP_LOG=str(log)))
    return root, log, venv


def test_status_file_is_passed_through(tmp_path):
    status = tmp_path / "fetch-status.json"
    status.write_text(json.dumps(dict(state="running", bytes_done=851443712, bytes_total=21045339750, files_done=1,
                                      files_total=12, rate_bytes_per_s=102760448, eta_s=196.5)))
    progress = job_progress.read_status_file(str(status), "weights")
    assert progress == dict(label="weights", phase="running", unit="bytes", done=851443712, total=21045339750,
                            items="files", items_done=1, items_total=12, rate=102760448, eta_s=196.5)
    assert job_progress.read_status_file(str(tmp_path / "none.json"), "weights")["phase"] == "starting"


def test_finished_pip_log_reports_every_package_and_the_checks(pip_run):
    root, log, venv = pip_run
    progress = job_progress.read_pip_log(str(log), str(venv), 0, 0, "venv", time.time())
    wheels = sum(path.stat().st_size for path in (root / "wheels").glob("*.whl"))
    assert progress["phase"].startswith("checking") and progress["items_done"] == progress["items_total"] == 2
    assert progress["done"] == progress["total"] == wheels


def test_half_installed_venv_counts_only_the_records_on_disk(pip_run, tmp_path):
    root, log, venv = pip_run
    cut = tmp_path / "pip.log"
    lines = log.read_text().splitlines(keepends=True)
    cut.write_text("".join(line for line in lines if "Successfully installed" not in line))
    half = tmp_path / "venv"
    shutil.copytree(venv, half, symlinks=True)
    record = next(half.glob("lib/python*/site-packages/tinyapp-1.0.dist-info/RECORD"))
    record.unlink()  # pip writes RECORD last: this one is still being installed
    progress = job_progress.read_pip_log(str(cut), str(half), 0, 0, "venv", time.time() + 5)
    tinydep = next((root / "wheels").glob("tinydep-*.whl")).stat().st_size
    assert progress["phase"] == "installing" and (progress["items_done"], progress["items_total"]) == (1, 2)
    assert progress["done"] == tinydep and progress["total"] > tinydep
    assert progress["rate"] and progress["eta_s"] is not None


def test_collecting_phase_counts_wheels_and_uses_the_hints(pip_run, tmp_path):
    _unused, log, venv = pip_run
    cut = tmp_path / "pip.log"
    lines = log.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:next(i for i, line in enumerate(lines) if "Installing collected" in line)]))
    progress = job_progress.read_pip_log(str(cut), str(venv), 5, 10 ** 9, "venv", time.time())
    assert progress["phase"] == "collecting wheels" and progress["items_done"] == 2 and progress["items_total"] == 5
    assert progress["total"] == 10 ** 9


def test_downloads_from_a_url_are_sized_from_the_log(tmp_path):
    log = tmp_path / "pip.log"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S,000", time.localtime(time.time() - 10))
    log.write_text("%s Collecting torch==2.13.0\n%s   Downloading https://m:8090/wheels/torch-2.13.0%%2Bcpu-cp311-"
                   "cp311-manylinux_2_28_x86_64.whl (190.3 MB)\n" % (stamp, stamp))
    progress = job_progress.read_pip_log(str(log), None, 0, 0, "venv", time.time())
    assert progress["done"] == 190300000 and progress["items_done"] == 1
    assert job_progress.wheel_key("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl") == ("torch", "2.13.0+cpu")
    assert job_progress.read_pip_log(str(tmp_path / "none.log"), None, 0, 0, "venv", 0)["phase"] == "creating the venv"
