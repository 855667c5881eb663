"""torch_wheel_tag picks the newest PyTorch CUDA build a driver can run, or cpu."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.autoglm.deploy.plugins.filter.pytorch import torch_wheel_tag

TAGS = ["cu130", "cu129", "cu128", "cu126"]


@pytest.mark.parametrize("driver, expected", [
    ("13.0", "cu130"), ("12.9", "cu129"), ("12.8", "cu128"), ("12.7", "cu126"), ("12.6", "cu126"),
    ("13.1", "cu130"), (None, "cpu"), ("", "cpu"),
])
def test_newest_build_not_newer_than_the_driver(driver, expected):
    assert torch_wheel_tag(driver, TAGS) == expected


def test_order_of_tags_does_not_matter():
    assert torch_wheel_tag("12.4", ["cu118", "cu124", "cu121"]) == "cu124"


def test_driver_older_than_every_build_is_named():
    with pytest.raises(AnsibleFilterError, match=r"supports CUDA 12\.4, older than the oldest PyTorch build offered \(cu126\)"):
        torch_wheel_tag("12.4", TAGS)


@pytest.mark.parametrize("driver, tags", [("twelve", TAGS), ("12.4", ["cuda12"])])
def test_malformed_input_is_refused(driver, tags):
    with pytest.raises(AnsibleFilterError):
        torch_wheel_tag(driver, tags)
