"""Shared pytest fixtures: import path for the collection, and running a module as Ansible does."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

# torch._dynamo first: ansible-core 2.19 replaces sys.intern with a patch object when a test imports its
# module_utils, and torch._dynamo (imported lazily by transformers' model code) refuses to load after that.
with contextlib.suppress(ImportError):  # without the model tooling, the tests that need it fail on their own
    import torch._dynamo  # noqa: F401  # pylint: disable=unused-import

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / "collections"
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(COLLECTIONS))


def _run_module(name: str, args: dict, check_mode: bool = False, diff: bool = False,
                env: dict | None = None, timeout: int = 120) -> dict:
    """Run plugins/modules/NAME.py in a subprocess with an args file, as Ansible's module runner does."""
    payload = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    args_file = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / ("module-args-%d.json" % os.getpid())
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "plugins" / "modules" / (name + ".py")), str(args_file)],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(COLLECTIONS), **(env or {})), check=False,
    )
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError("module %s printed no JSON (rc=%s)\nstdout: %s\nstderr: %s"
                             % (name, proc.returncode, proc.stdout, proc.stderr)) from exc
    result["_rc"] = proc.returncode
    return result


@pytest.fixture
def run_module():
    return _run_module


@pytest.fixture
def smi_fixture(tmp_path):
    """A recorded machine's folder from tests/fixtures/nvidia-smi, laid out under tmp_path: its files, the
    nvidia-smi link to ../replay, and its sysfs slice unpacked from sysfs.tar into FOLDER/sysfs. The slice is
    stored as an archive because PCI addresses have colons (file names Windows, Galaxy's ansible-test sanity
    and some checkouts refuse) and its driver links point at folders the slice leaves out."""
    recorded = FIXTURES / "nvidia-smi"

    def machine(name: str) -> Path:
        root = tmp_path / "recorded-gpus"
        root.mkdir(exist_ok=True)
        shutil.copy2(recorded / "replay", root / "replay")
        folder = root / name
        shutil.copytree(recorded / name, folder, symlinks=True)
        archive = folder / "sysfs.tar"
        if archive.exists():
            with tarfile.open(archive) as tar:
                # the data filter (Python 3.11.4+) refuses members and links that leave the folder
                tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            archive.unlink()
        return folder
    return machine
