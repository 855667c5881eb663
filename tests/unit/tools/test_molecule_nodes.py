"""tools/molecule_nodes.py: molecule's platforms become the docker options the lab's nodes run with, and an option
it does not know is refused instead of dropped."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("molecule_nodes", REPO / "tools" / "molecule_nodes.py")
molecule_nodes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(molecule_nodes)


def shared_platform() -> dict:
    return yaml.safe_load((REPO / ".config" / "molecule" / "config.yml").read_text())["platforms"][0]


def test_the_shared_platform_runs_as_the_lab_runs_its_nodes():
    args = molecule_nodes.run_args(shared_platform())
    text = " ".join(args)
    for expected in ("--name role-node1", "--hostname role-node1", "--network autoglm-molecule-roles",
                     "--ip 10.77.21.21", "--cap-add SYS_ADMIN", "--cap-add NET_ADMIN", "--cgroupns host",
                     "-v /sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs /run", "--tmpfs /run/lock",
                     "--security-opt seccomp=unconfined", "--security-opt apparmor=unconfined"):
        assert expected in text, expected
    assert args[-2:] == ["autoglm-node:latest", "/lib/systemd/systemd"]
    assert molecule_nodes.networks_of([shared_platform()]) == {"autoglm-molecule-roles": "10.77.21.0/24"}


def test_every_scenarios_platforms_are_understood():
    for scenario in sorted((REPO / "molecule").glob("*/molecule.yml")):
        for platform in yaml.safe_load(scenario.read_text()).get("platforms") or []:
            merged = {**shared_platform(), **platform}
            assert molecule_nodes.run_args(merged)[0] == "run", scenario


@pytest.mark.parametrize("change, message", [
    ({"privileged": True}, "privileged"),
    ({"networks": []}, "exactly one network"),
    ({"networks": [{"name": "autoglm-molecule-roles"}]}, "ipv4_address"),
])
def test_an_option_it_cannot_honour_is_refused(change, message):
    with pytest.raises(SystemExit) as refused:
        molecule_nodes.run_args({**shared_platform(), **change})
    assert message in str(refused.value)
