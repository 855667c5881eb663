"""code_archive (controller) + code_tree (node): a package reaches a folder in one call, drift is put back,
files dropped from the package go, and a hostile archive is refused. Real ansible-playbook on localhost."""
from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from support.playbook import REPO, run_local_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Install the package
      autoglm.deploy.code_tree:
        dest: "{{ dest }}"
        archive: "{{ archive | default(lookup('autoglm.deploy.code_archive', src)) }}"
      register: result
    - name: Show it
      ansible.builtin.debug:
        var: result
"""


def run(tmp_path: Path, src: Path, dest: Path, check: bool = False, archive: dict | None = None):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    extra = ["src=%s" % src, "dest=%s" % dest]
    if archive is not None:
        (tmp_path / "archive.json").write_text(__import__("json").dumps({"archive": archive}))
        extra.append("@%s" % (tmp_path / "archive.json"))
    rc, report, output = run_local_playbook(playbook, tmp_path, tuple(extra), check=check)
    assert report is not None, output
    tasks = report["plays"][0]["tasks"]
    return rc, tasks[0]["hosts"]["localhost"], output


@pytest.fixture
def package(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "pkg"
    shutil.copytree(REPO / "server" / "autoglm_serve", src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "sub").mkdir()
    (src / "sub" / "extra.py").write_text("VALUE = 1\n")
    (src / "notes.txt").write_text("not code\n")
    return src


def test_install_rerun_drift_and_removal(tmp_path: Path, package: Path):
    dest = tmp_path / "dest" / "pkg"
    rc, result, output = run(tmp_path, package, dest, check=True)
    assert rc == 0 and result["changed"], output
    assert not dest.exists(), "check mode wrote files"

    rc, result, output = run(tmp_path, package, dest)
    assert rc == 0 and result["changed"], output
    expected = sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))
    assert result["added"] == expected
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == expected
    assert not (dest / "notes.txt").exists(), "only *.py files are shipped by default"

    rc, result, output = run(tmp_path, package, dest)
    assert rc == 0 and not result["changed"], output

    # Drift: an edited module, a stray module, a deleted module, a wrong mode, stale bytecode.
    (dest / "api.py").write_text("raise SystemExit('tampered')\n")
    (dest / "evil.py").write_text("import os\n")
    (dest / "engine.py").unlink()
    (dest / "sub" / "extra.py").chmod(0o666)
    (dest / "__pycache__").mkdir()
    (dest / "__pycache__" / "evil.cpython-311.pyc").write_bytes(b"stale")
    rc, result, output = run(tmp_path, package, dest, check=True)
    assert rc == 0 and result["changed"]
    assert (dest / "evil.py").exists(), "check mode removed a file"
    rc, result, output = run(tmp_path, package, dest)
    assert rc == 0 and result["changed"], output
    assert result["added"] == ["engine.py"]
    assert result["updated"] == ["api.py", "sub/extra.py"]
    assert result["removed"] == ["evil.py"]
    assert (dest / "api.py").read_bytes() == (package / "api.py").read_bytes()
    assert (dest / "sub" / "extra.py").stat().st_mode & 0o777 == 0o644
    assert not (dest / "__pycache__").exists(), "bytecode of a removed module outlived it"

    # A module dropped from the package is dropped on the node, with its folder.
    shutil.rmtree(package / "sub")
    rc, result, output = run(tmp_path, package, dest)
    assert rc == 0 and result["removed"] == ["sub", "sub/extra.py"], output
    assert not (dest / "sub").exists()


def test_archive_is_reproducible(tmp_path: Path, package: Path):
    from ansible_collections.autoglm.deploy.plugins.lookup.code_archive import pack

    first, second = pack(str(package), ["*.py"]), pack(str(package), ["*.py"])
    assert first["sha256"] == second["sha256"] and first["data"] == second["data"]
    (package / "api.py").write_text((package / "api.py").read_text() + "\n# changed\n")
    assert pack(str(package), ["*.py"])["sha256"] != first["sha256"]


def hostile_archive(name: str) -> dict:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    raw = buffer.getvalue()
    return {"data": base64.b64encode(raw).decode(), "sha256": hashlib.sha256(raw).hexdigest(), "files": [name]}


@pytest.mark.parametrize("name", ["../escape.py", "/etc/escape.py", "a/../../escape.py"])
def test_hostile_archive_is_refused(tmp_path: Path, package: Path, name: str):
    dest = tmp_path / "dest" / "pkg"
    rc, result, output = run(tmp_path, package, dest, archive=hostile_archive(name))
    assert rc != 0 and "not a plain file at a relative path" in result["msg"], output
    assert not (tmp_path / "dest" / "escape.py").exists() and not dest.exists()


def test_tampered_archive_is_refused(tmp_path: Path, package: Path):
    archive = hostile_archive("ok.py")
    archive["sha256"] = "0" * 64
    rc, result, output = run(tmp_path, package, tmp_path / "dest", archive=archive)
    assert rc != 0 and "does not match archive.sha256" in result["msg"], output
