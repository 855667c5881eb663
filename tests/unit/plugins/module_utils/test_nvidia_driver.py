"""Parsing of NVIDIA driver versions, on texts recorded from loaded modules and real package versions."""
from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _nvidia_driver as drv

RECORDED = Path(__file__).resolve().parents[3] / "fixtures" / "nvidia-driver"


@pytest.mark.parametrize(("name", "version", "flavour"), [
    ("proc-version-open-580.txt", "580.95.05", "open"),
    ("proc-version-proprietary-535.txt", "535.129.03", "proprietary"),
    ("proc-version-aarch64-open-570.txt", "570.172.08", "open"),
    ("sys-module-nvidia-version.txt", "580.95.05", None),
])
def test_loaded_version_from_recorded_files(name, version, flavour):
    assert drv.parse_loaded_version((RECORDED / name).read_text()) == {"version": version, "flavour": flavour}


@pytest.mark.parametrize("text", ["", "\n", "GCC version:  gcc version 12.2.0\n", "nouveau 1.3.1 something\n"])
def test_text_without_a_version_is_none(text):
    assert drv.parse_loaded_version(text) is None


def test_the_date_in_the_nvrm_line_is_not_taken_for_the_version():
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    assert drv.parse_loaded_version(text)["version"] == "550.54.15"


@pytest.mark.parametrize(("package_version", "upstream"), [
    ("580.95.05-1", "580.95.05"),                  # NVIDIA CUDA repository, Debian 12
    ("580.95.05-0ubuntu1", "580.95.05"),           # NVIDIA CUDA repository, Ubuntu
    ("580.95.05-0ubuntu0.24.04.2", "580.95.05"),   # Ubuntu archive (-server packages)
    ("1:535.247.01-1~deb12u1", "535.247.01"),      # Debian non-free, with epoch
    ("3:580.95.05-1.el9", "580.95.05"),            # rpm EPOCHNUM:VERSION-RELEASE, CUDA rhel9 repository
    ("0:580.105.08-1.el9", "580.105.08"),
    ("550.54", "550.54"),
    (None, None),
    ("", None),
    ("garbage", None),
])
def test_upstream_version(package_version, upstream):
    assert drv.upstream_version(package_version) == upstream


def test_no_reason_when_versions_match_and_no_nouveau():
    assert drv.reboot_reasons("580.95.05", "580.95.05", []) == []


def test_mismatch_names_both_versions():
    (reason,) = drv.reboot_reasons("580.105.08", "580.95.05", [])
    assert "loaded nvidia kernel module is 580.95.05" in reason and "installed driver is 580.105.08" in reason


def test_nouveau_bound_cards_are_named():
    reasons = drv.reboot_reasons("580.95.05", None, ["0000:3b:00.0"])
    assert len(reasons) == 1 and "nouveau is bound to 0000:3b:00.0" in reasons[0]


def test_installed_but_not_loaded():
    (reason,) = drv.reboot_reasons("580.95.05", None, [])
    assert "installed but not loaded" in reason


def test_nothing_installed_needs_no_reboot():
    assert drv.reboot_reasons(None, None, []) == []
