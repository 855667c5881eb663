"""python_venv refuses a mirror source without its URL and an unknown file check, before touching the host."""
from __future__ import annotations

from test_role_arguments import run_role


def test_mirror_source_without_its_url_is_refused_first():
    proc = run_role("python_venv", ["python_venv_source=mirror"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "python_venv_find_links_url" in out and "/wheels/" in out, out
    assert "Gather GPU facts" not in out  # the first task, before anything is fetched


def test_unknown_file_check_is_refused_by_the_argument_spec():
    proc = run_role("python_venv", ["python_venv_verify_files=quick"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "python_venv_verify_files" in out and "quick" in out, out
