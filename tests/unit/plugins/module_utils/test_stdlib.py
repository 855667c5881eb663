"""The standard-library helpers the modules and the mirror share (module_utils/_stdlib.py)."""
from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _stdlib


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_whole_with_the_mode_and_leaves_no_temp(tmp_path, durable):
    target = tmp_path / "new" / "state.json"
    _stdlib.atomic_write(str(target), b"one", durable=durable)
    _stdlib.atomic_write(str(target), b"two", mode=0o600, durable=durable)
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["state.json"]


def test_atomic_write_that_fails_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", lambda *a: (_unused for _unused in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        _stdlib.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("path, root, inside", [
    ("/srv/m", "/srv/m", True), ("/srv/m/a/b", "/srv/m", True), ("/srv/m/a", "/srv/m/", True),
    ("/srv/mx", "/srv/m", False), ("/srv", "/srv/m", False), ("/anything", "/", True),
])
def test_is_inside(path, root, inside):
    assert _stdlib.is_inside(path, root) is inside


def test_resolves_inside_follows_symlinks(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert _stdlib.resolves_inside(str(tmp_path / "root" / "a"), str(tmp_path / "root"))
    assert not _stdlib.resolves_inside(str(tmp_path / "root" / "out" / "a"), str(tmp_path / "root"))


def test_credential_free_urls():
    assert _stdlib.strip_credentials("https://u:p@[::1]:8443/base/?token=x#f") == "https://[::1]:8443/base"
    assert _stdlib.strip_credentials("not a url") == "not a url"


def test_content_commit_ignores_order():
    pairs = [("b", "2" * 64), ("a", "1" * 64)]
    assert _stdlib.content_commit(pairs) == _stdlib.content_commit(reversed(pairs))
    assert len(_stdlib.content_commit(pairs)) == 40
