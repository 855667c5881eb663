"""The mirror serves the fleet's wheelhouse at /wheels/ (https, no token): a real `pip install --no-index
--find-links https://127.0.0.1:PORT/wheels/ --cert CA` of a wheel built here, the listing's names and hashes."""
from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import venv
from pathlib import Path

import pytest
from support.hostile_hub import make_ca
from support.mirror import MirrorProcess, mirror_fixture_server
from support.wheelhouse import build_wheels, isolated_pip_env

LINK = re.compile(r'<a href="([^"#]+)#sha256=([0-9a-f]{64})">([^<]+)</a>')


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheelhouse")
    house = root / "house"
    build_wheels(root / "src", house / "0123456789ab", [("mirrorpkg", "1.0", ("mirrordep==2.0",), "")])
    build_wheels(root / "src2", house, [("mirrordep", "2.0", (), "")])
    (house / "README.txt").write_text("not a wheel\n")
    (house / ".partial-download.whl").write_text("hidden\n")
    return house


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> dict:
    return make_ca(tmp_path_factory.mktemp("pki"), ["localhost", "IP:127.0.0.1"])


@pytest.fixture
def https_mirror(mirror_data, wheelhouse, ca, tmp_path):
    server = mirror_fixture_server(mirror_data, tmp_path, wheelhouse=wheelhouse, tls_cert=ca["cert"], tls_key=ca["key"],
                                   cafile=ca["ca"])
    yield server
    server.stop()


def get(server: MirrorProcess, path: str, ca: dict, method: str = "GET", headers: dict | None = None):
    context = ssl.create_default_context(cafile=ca["ca"])
    request = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(request, timeout=20, context=context)
    except urllib.error.HTTPError as err:
        return err


def test_listing_names_each_wheel_with_its_sha256_and_nothing_else(https_mirror, wheelhouse, ca):
    resp = get(https_mirror, "/wheels/", ca)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    links = LINK.findall(resp.read().decode())
    expected = sorted(p for p in wheelhouse.rglob("*.whl") if not p.name.startswith("."))
    assert sorted(text for _href, _digest, text in links) == sorted(p.name for p in expected)
    for href, digest, _text in links:
        assert digest == hashlib.sha256((wheelhouse / href).read_bytes()).hexdigest()
    one_set = LINK.findall(get(https_mirror, "/wheels/0123456789ab/", ca).read().decode())
    assert [text for _h, _d, text in one_set] == ["mirrorpkg-1.0-py3-none-any.whl"]


def test_wheels_need_no_token_and_answer_head_and_ranges(https_mirror, wheelhouse, ca):
    name = "mirrordep-2.0-py3-none-any.whl"
    whole = (wheelhouse / name).read_bytes()
    head = get(https_mirror, "/wheels/" + name, ca, "HEAD")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(whole)
    part = get(https_mirror, "/wheels/" + name, ca, headers={"Range": "bytes=0-9"})
    assert part.status == 206 and part.read() == whole[:10]
    assert get(https_mirror, "/wheels", ca).url.endswith("/wheels/")  # the redirect keeps relative links right


@pytest.mark.parametrize("path", ["/wheels/README.txt", "/wheels/..%2f..%2fetc%2fpasswd.whl", "/wheels/.partial-download.whl",
                                  "/wheels/nope/", "/wheels/a/b/c.whl"])
def test_only_wheels_and_sdists_by_valid_names(https_mirror, ca, path):
    assert get(https_mirror, path, ca).status in (400, 404)


def test_pip_installs_from_the_mirror_over_https(https_mirror, ca, tmp_path):
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    pip = [str(target / "bin" / "python"), "-m", "pip"]
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override pip's --cert: a node has neither set.
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")}
    env.update(isolated_pip_env(), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
    proc = subprocess.run([*pip, "install", "--no-index", "--find-links", https_mirror.url + "/wheels/",
                           "--cert", ca["ca"], "mirrorpkg==1.0"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check = subprocess.run([str(target / "bin" / "python"), "-c", "import mirrorpkg, mirrordep; print(mirrorpkg.__version__)"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.stdout.strip() == "1.0", check.stderr
    log = https_mirror.log()
    assert '"GET /wheels/" 200' in log and '"GET /wheels/0123456789ab/mirrorpkg-1.0-py3-none-any.whl" 200' in log


def test_no_wheelhouse_no_wheels(mirror, ca):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(mirror.url + "/wheels/", timeout=10)
    assert err.value.code == 404


def test_a_missing_wheelhouse_refuses_to_start(mirror_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autoglm_mirror", "serve", "--data", str(mirror_data), "--port", "0",
                           "--wheelhouse", str(tmp_path / "absent")], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "mirror")), check=False)
    assert proc.returncode == 2 and "--wheelhouse" in proc.stderr
