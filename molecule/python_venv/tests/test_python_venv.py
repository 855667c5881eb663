"""State on the nodes after the python_venv scenario: torch (CPU) + transformers from the controller's
wheelhouse, no index reachable, no pip on a rerun; on role-node1 a pin change switched the link and two broken
requirements left it alone."""
from __future__ import annotations

import json
import re

import pytest

SERVICE = "/opt/autoglm/venvs/autoglm"
RECORD = "/var/tmp/python_venv_side_effect"
MARKER = ".autoglm-venv.json"
# Venvs are named by 12 hex digits; "current" (also all hex letters) is the link, not a venv.
VENVS = "ls -d %s/" % SERVICE + "[0-9a-f]" * 12


def marker(host) -> dict:
    return json.loads(host.file("%s/current/%s" % (SERVICE, MARKER)).content_string)


def test_current_links_to_a_hash_named_venv(host):
    link = host.file(SERVICE + "/current")
    assert link.is_symlink and re.fullmatch(r"[0-9a-f]{12}", link.linked_to.split("/")[-1])
    assert marker(host)["hash"].startswith(link.linked_to.split("/")[-1])


def test_torch_cpu_and_transformers_import(host):
    out = host.check_output(SERVICE + "/current/bin/python -c "
                            "'import torch, torchvision, PIL, transformers, tokenizers, safetensors, huggingface_hub; "
                            "print(torch.__version__, torchvision.__version__, transformers.__version__, torch.cuda.is_available())'")
    # torchvision is the lab's CPU repack (tools/lab/cpu_torch_wheels.py), preferred to PyPI's CUDA build.
    assert out.split() == ["2.13.0+cpu", "0.28.0+cpulab", "5.23.0", "False"]
    recorded = marker(host)
    assert recorded["versions"]["torch"] == "2.13.0+cpu" and recorded["cuda"]["available"] is False
    assert recorded["imports"] == {"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpulab", "transformers": "5.23.0"}


def test_installed_offline_from_the_copied_wheelhouse(host):
    sources = marker(host)["inputs"]["sources"]
    assert sources["no_index"] is True and sources["index_url"] is None
    (wheel_set,) = sources["find_links"]
    assert wheel_set.startswith("/opt/autoglm/wheelhouse/")
    assert host.file(wheel_set).is_directory
    assert host.run("ls %s/torch-2.13.0+cpu-*.whl" % wheel_set).rc == 0
    # The only wheel set on the node is the one in use.
    assert host.check_output("ls /opt/autoglm/wheelhouse").split() == [wheel_set.split("/")[-1]]


def test_no_index_is_reachable_from_the_node(host):
    probe = host.run(SERVICE + "/current/bin/python -m pip download --no-deps -d /tmp/probe six")
    assert probe.rc != 0 and "No matching distribution found for six" in probe.stderr


def test_rerun_runs_no_pip(host):
    inputs = marker(host)["inputs"]
    args = dict(path=SERVICE, python=inputs["python"]["path"], requirements=inputs["requirements"],
                constraints=inputs["constraints"], **{key: value for key, value in inputs["sources"].items() if value is not None})
    result = host.ansible("autoglm.deploy.python_venv", json.dumps(args), check=False)
    assert result["changed"] is False and result["pip_runs"] == 0
    assert result["venv"] == SERVICE + "/" + host.file(SERVICE + "/current").linked_to.split("/")[-1]


def test_pin_change_switched_the_link_and_kept_the_old_venv(host):
    if host.backend.get_hostname() != "role-node1":
        assert len(host.check_output(VENVS).split()) == 1
        assert marker(host)["versions"]["tqdm"] == "4.67.1"
        return
    before = host.file(RECORD + "/before").content_string.strip()
    after = host.file(RECORD + "/after").content_string.strip()
    assert before != after and host.file(SERVICE + "/current").linked_to.endswith("/" + after)
    assert host.file("%s/%s/%s" % (SERVICE, before, MARKER)).exists  # keep=2: the previous venv stays
    assert marker(host)["versions"]["tqdm"] == "4.67.0"


@pytest.mark.parametrize("record", ["role_failure", "module_failure"])
def test_broken_requirement_names_the_package_and_leaves_the_link(host, record):
    if host.backend.get_hostname() != "role-node1":
        pytest.skip("the side effect runs on role-node1")
    message = host.file("%s/%s" % (RECORD, record)).content_string
    assert "autoglm-no-such-package" in message and "No matching distribution found" in message
    after = host.file(RECORD + "/after").content_string.strip()
    assert host.file(SERVICE + "/current").linked_to.endswith("/" + after)
    if record == "module_failure":
        assert "package=autoglm-no-such-package" in message and "still points at %s/%s" % (SERVICE, after) in message
    # The failed build left no venv behind: only the two kept ones.
    assert len(host.check_output(VENVS).split()) == 2
