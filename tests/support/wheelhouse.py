"""Tiny local wheelhouses for the pip-driving modules' tests: trivial packages built with `pip wheel`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def write_project(src_root: Path, name: str, version: str, requires: tuple = (), body: str = "") -> Path:
    """A trivial setuptools project NAME-VERSION whose package sets __version__ and runs BODY on import."""
    src = src_root / ("%s-%s" % (name, version))
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("__version__ = %r\n%s" % (version, body))
    deps = ", ".join('"%s"' % req for req in requires)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "%s"\nversion = "%s"\ndependencies = [%s]\n'
        '[tool.setuptools]\npackages = ["%s"]\n' % (name, version, deps, name))
    return src


def build_wheels(src_root: Path, dest: Path, projects: list) -> list:
    """Build each (name, version, requires, body) as a pure-python wheel into DEST, in one pip run."""
    # One pip run per round of distinct names: pip refuses two versions of one project in a run.
    rounds: list = []
    for project in projects:
        free = next((batch for batch in rounds if project[0] not in {name for name, *_unused in batch}), None)
        if free is None:
            free = []
            rounds.append(free)
        free.append(project)
    dest.mkdir(parents=True, exist_ok=True)
    for batch in rounds:
        sources = [write_project(src_root, *project) for project in batch]
        # --no-build-isolation: the tool venv's setuptools builds them, nothing is fetched.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(dest), *map(str, sources)], check=True, capture_output=True, text=True,
                       env=dict(isolated_pip_env(), PATH="/usr/bin:/bin"))
    return sorted(dest.glob("*.whl"))


def isolated_pip_env() -> dict:
    """Environment that hides this machine's pip configuration (find-links, extra indexes) from the modules."""
    return {"PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
