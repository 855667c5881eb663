"""model_mirror's wheelhouse sync (tasks_from: wheelhouse) on localhost: new wheels copied, vanished ones and
their set folders removed, hidden partial downloads skipped, wheels unpacked in a hidden folder and moved into
place (the leftovers of a run cut short cleared), a rerun changes nothing, check mode writes nothing."""
from __future__ import annotations

from pathlib import Path

from support.playbook import run_local_playbook

PLAY = """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: autoglm.deploy.model_mirror
        tasks_from: wheelhouse
"""


def changed(report: dict) -> int:
    return sum(stats["changed"] for stats in report["stats"].values())


def sync(tmp_path: Path, src: Path, dest: Path, check: bool = False) -> dict:
    playbook = tmp_path / "sync.yml"
    playbook.write_text(PLAY)
    rc, report, out = run_local_playbook(playbook, tmp_path, check=check, extra_vars=(
        "model_mirror_wheelhouse_src=%s" % src, "model_mirror_wheelhouse_dir=%s" % dest))
    assert rc == 0 and report is not None, out[-3000:]
    return report


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sync_copies_removes_and_is_idempotent(tmp_path):
    src, dest = tmp_path / "controller", tmp_path / "node"
    (src / "abcdef012345").mkdir(parents=True)
    (src / "abcdef012345" / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 100)
    (src / "b-2.0.tar.gz").write_bytes(b"b" * 10)
    (src / ".abcdef012345.tmp").mkdir()
    (src / ".abcdef012345.tmp" / "c-1.0-py3-none-any.whl").write_bytes(b"partial")
    (src / "notes.txt").write_text("not served")

    assert changed(sync(tmp_path, src, dest, check=True)) > 0 and not dest.exists()
    assert changed(sync(tmp_path, src, dest)) > 0
    assert tree(dest) == {"abcdef012345/a-1.0-py3-none-any.whl": b"a" * 100, "b-2.0.tar.gz": b"b" * 10}
    assert changed(sync(tmp_path, src, dest)) == 0

    (src / "abcdef012345" / "a-1.0-py3-none-any.whl").unlink()
    (src / "abcdef012345").rmdir()
    (src / "fedcba987654").mkdir()
    (src / "fedcba987654" / "d-3.0-py3-none-any.whl").write_bytes(b"d" * 5)
    (src / "b-2.0.tar.gz").write_bytes(b"B" * 11)  # rebuilt: another size
    # A run cut short while unpacking leaves its hidden unpack folder: never served, cleared by the next run.
    (dest / ".incoming").mkdir()
    (dest / ".incoming" / "b-2.0.tar.gz").write_bytes(b"cut")
    assert changed(sync(tmp_path, src, dest)) > 0
    assert tree(dest) == {"b-2.0.tar.gz": b"B" * 11, "fedcba987654/d-3.0-py3-none-any.whl": b"d" * 5}
    assert not (dest / "abcdef012345").exists()
    assert changed(sync(tmp_path, src, dest)) == 0


def test_a_missing_source_is_refused_naming_the_variable(tmp_path):
    playbook = tmp_path / "sync.yml"
    playbook.write_text(PLAY)
    rc, _report, out = run_local_playbook(playbook, tmp_path, extra_vars=(
        "model_mirror_wheelhouse_src=%s" % (tmp_path / "absent"), "model_mirror_wheelhouse_dir=%s" % (tmp_path / "node")))
    assert rc != 0 and "model_mirror_wheelhouse_src" in out and "python_venv_wheelhouse_controller_dir" in out
