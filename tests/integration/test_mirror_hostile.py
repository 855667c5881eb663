"""The mirror under hostile input, over real sockets: header injection, framing, slow clients, tokens, TLS."""
from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.mirror import PRIVATE_REPO, TINY_REPO, MirrorProcess, ingest

SPLIT = "%0d%0aSet-Cookie:%20pwned=1%0d%0a%0d%0aHTTP/1.1%20200%20OK%0d%0aX-Smuggled:%201"


def exchange(url: str, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout), return everything it sent."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out


def get(path: str) -> bytes:
    return ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode()


@pytest.mark.parametrize("path", [
    "/%s/resolve/main/a%s" % (TINY_REPO, SPLIT),
    "/%s/resolve/main%s/config.json" % (TINY_REPO, SPLIT),
    "/api/v1/models/%s/repo?Revision=main&FilePath=a%s" % (TINY_REPO, SPLIT),
    "/api/v1/models/%s/repo?Revision=m%s&FilePath=config.json" % (TINY_REPO, SPLIT),
])
def test_decoded_crlf_never_splits_the_response(mirror, path):
    out = exchange(mirror.url, get(path))
    head = out.split(b"\r\n\r\n", 1)[0]
    assert out.count(b"HTTP/1.1 ") == 1 or b"HTTP/1.1 200" not in out.split(b"\r\n\r\n", 1)[1]
    assert head.startswith(b"HTTP/1.1 400"), out[:300]
    assert b"\r\nSet-Cookie" not in head and b"\r\nX-Smuggled" not in head


def test_protected_repo_401_tells_huggingface_hub_to_pass_a_token(mirror, tmp_path):
    out = exchange(mirror.url, get("/%s/resolve/main/config.json" % PRIVATE_REPO))
    assert out.startswith(b"HTTP/1.1 401") and b"\r\nX-Error-Code: RepoNotFound\r\n" in out
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=mirror.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    code = ("from huggingface_hub import hf_hub_download\n"
            "from huggingface_hub.errors import RepositoryNotFoundError\n"
            "try:\n    hf_hub_download(%r, 'config.json')\n"
            "except RepositoryNotFoundError as err:\n    print('NOTFOUND', err)\n" % PRIVATE_REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert "NOTFOUND" in proc.stdout and "authenticated" in proc.stdout, proc.stdout + proc.stderr


# ---- framing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "status"), [
    ("Content-Length: -1\r\n", b"400"),
    ("Content-Length: abc\r\n", b"400"),
    ("Content-Length: 2\r\nContent-Length: 3\r\n", b"400"),
    ("Transfer-Encoding: chunked\r\n", b"501"),
])
def test_unframeable_bodies_are_refused_and_the_connection_closed(mirror, headers, status):
    raw = ("POST /api/models/%s/paths-info/main HTTP/1.1\r\nHost: x\r\n%s\r\n" % (TINY_REPO, headers)).encode()
    raw += b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # would be a second request if parsed on
    started = time.monotonic()
    out = exchange(mirror.url, raw, timeout=8)
    assert time.monotonic() - started < 5  # answered and closed, not hung
    assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    assert out.count(b"HTTP/1.1 ") == 1


def test_an_oversized_body_is_not_parsed_as_the_next_request(mirror):
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (b"POST /api/models/%s/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
           % (TINY_REPO.encode(), 5 << 20)) + b"x" * (1 << 20) + smuggled
    out = exchange(mirror.url, raw, timeout=8)
    assert out.startswith(b"HTTP/1.1 413") and out.count(b"HTTP/1.1 ") == 1


def test_an_unread_body_on_get_closes_instead_of_desyncing(mirror):
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    out = exchange(mirror.url, raw, timeout=5)
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1 ") == 1


def test_deep_json_and_huge_range_get_clean_answers(mirror):
    body = b"[" * 100000 + b"]" * 100000
    raw = (b"POST /api/models/%s/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (TINY_REPO.encode(), len(body))) + body
    assert exchange(mirror.url, raw).startswith(b"HTTP/1.1 400")
    path = "/%s/resolve/main/config.json" % TINY_REPO
    for value, status in (("bytes=%s-" % ("9" * 5000), b"416"), ("bytes=-%s" % ("9" * 5000), b"200"),
                          ("bytes=0-%s" % ("9" * 5000), b"206")):
        raw = ("GET %s HTTP/1.1\r\nHost: x\r\nRange: %s\r\nConnection: close\r\n\r\n" % (path, value)).encode()
        out = exchange(mirror.url, raw)
        assert out.startswith(b"HTTP/1.1 " + status) or (status == b"200" and out.startswith(b"HTTP/1.1 206")), out[:100]


# ---- deadlines, cap, quiet resets ----------------------------------------------------------------
def test_slow_clients_are_cut_off_and_connections_capped(mirror_factory):
    server = mirror_factory(request_timeout=2, idle_timeout=1, max_connections=3, quiet=True)
    host, port = "127.0.0.1", server.port
    slow = socket.create_connection((host, port), timeout=10)
    started = time.monotonic()
    closed = False
    try:
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            slow.sendall(bytes([ch]))
            time.sleep(0.1)
            if time.monotonic() - started > 8:
                break
    except OSError:
        closed = True
    if not closed:
        slow.settimeout(2)
        try:
            closed = slow.recv(100) == b""
        except OSError:
            closed = True
    slow.close()
    assert closed and time.monotonic() - started < 7.5
    idle = [socket.create_connection((host, port), timeout=5) for _unused in range(3)]
    time.sleep(0.3)
    out = exchange(server.url, get("/health"), timeout=5)
    assert out.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in out
    for sock in idle:
        sock.close()
    time.sleep(1.5)  # the idle timeout frees the slots of any connection left
    assert exchange(server.url, get("/health")).startswith(b"HTTP/1.1 200")


def test_a_reset_idle_keep_alive_connection_leaves_no_traceback(mirror_factory):
    server = mirror_factory(quiet=True)
    for _unused in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /hea")  # half a request, then a reset while the server reads the rest
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.5)
    assert exchange(server.url, get("/health")).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in server.log()


# ---- tokens -------------------------------------------------------------------------------------
def test_a_comma_in_the_token_does_not_split_it(mirror_data, tmp_path):
    token = "S3cret-long-token,a"
    with MirrorProcess(mirror_data, log_dir=tmp_path, env={"AUTOGLM_MIRROR_TOKEN": token},
                       protected_repo=[PRIVATE_REPO]) as server:
        path = "/%s/resolve/main/config.json" % PRIVATE_REPO
        for given, status in (("a", b"401"), ("S3cret-long-token", b"401"), (token, b"200")):
            raw = ("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n"
                   % (path, given)).encode()
            assert exchange(server.url, raw).startswith(b"HTTP/1.1 " + status), given


@pytest.mark.parametrize("token", ["short", "has space-in-the-middle-0123"])
def test_weak_or_blank_tokens_are_refused_at_start(mirror_data, tmp_path, token):
    proc = subprocess.run([sys.executable, "-m", "autoglm_mirror", "serve", "--data", str(mirror_data), "--port", "0",
                           "--protected-repo", PRIVATE_REPO], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "mirror"),
                                   AUTOGLM_MIRROR_TOKEN=token), check=False)
    assert proc.returncode == 2 and "token" in proc.stderr


# ---- ModelScope revisions ------------------------------------------------------------------------
@pytest.fixture
def two_tag_data(tmp_path, tiny_model_dir) -> Path:
    data = tmp_path / "ms-data"
    ingest(data, TINY_REPO, tiny_model_dir, "a" * 40, ["old"], ["v0.9"], "--link")
    time.sleep(1.1)  # creation times are in seconds
    newer = tmp_path / "newer-src"
    newer.mkdir()
    for f in tiny_model_dir.iterdir():
        (newer / f.name).write_bytes(f.read_bytes())
    (newer / "README.md").write_text("newer\n")
    ingest(data, TINY_REPO, newer, "b" * 40, ["main"], ["v1.0"], "--link")
    return data


def test_modelscope_revisions_have_creation_times_newest_first(mirror_factory, two_tag_data):
    server = mirror_factory(data=two_tag_data)
    with urllib.request.urlopen(server.url + "/api/v1/models/%s/revisions" % TINY_REPO, timeout=10) as resp:
        rev_map = json.loads(resp.read())["Data"]["RevisionMap"]
    tags = [(t["Revision"], t["CreatedAt"]) for t in rev_map["Tags"]]
    assert [name for name, _unused in tags] == ["v1.0", "v0.9"]
    assert tags[0][1] > tags[1][1] > time.time() - 3600
    assert all(b["CreatedAt"] > 0 for b in rev_map["Branches"])


MS_PYTHON = os.environ.get("MODELSCOPE_PYTHON", sys.executable)


def test_modelscope_client_picks_one_revision_for_file_and_snapshot(mirror_factory, two_tag_data, tmp_path):
    if subprocess.run([MS_PYTHON, "-c", "import modelscope"], capture_output=True, check=False).returncode != 0:
        pytest.skip("the modelscope client is not installed (set MODELSCOPE_PYTHON to an interpreter that has it)")
    server = mirror_factory(data=two_tag_data)
    code = ("import json\n"
            "from modelscope.hub.file_download import model_file_download\n"
            "from modelscope.hub.snapshot_download import snapshot_download\n"
            "one = model_file_download(%r, 'README.md', cache_dir='f')\n"
            "snap = snapshot_download(%r, cache_dir='s')\n"
            "print(json.dumps([open(one).read(), open(snap + '/README.md').read()]))\n" % (TINY_REPO, TINY_REPO))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSCOPE")}
    env.update(MODELSCOPE_DOMAIN=server.url, MODELSCOPE_ENDPOINT=server.url, MODELSCOPE_CACHE=str(tmp_path / "c"))
    proc = subprocess.run([MS_PYTHON, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, snap = json.loads(proc.stdout.strip().splitlines()[-1])
    assert one == snap == "newer\n"


# ---- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=mirror test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


def test_https_with_a_ca_bundle(mirror_data, tmp_path, pki):
    with MirrorProcess(mirror_data, log_dir=tmp_path, cafile=pki / "ca.pem", tls_cert=pki / "server.pem",
                       tls_key=pki / "server.key") as server:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with urllib.request.urlopen(server.url + "/%s/resolve/main/config.json" % TINY_REPO, context=context,
                                    timeout=10) as resp:
            assert json.loads(resp.read())["model_type"] == "qwen2"
        with pytest.raises(urllib.error.URLError):  # not trusted without the CA
            urllib.request.urlopen(server.url + "/health", timeout=10, context=ssl.create_default_context())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
                   REQUESTS_CA_BUNDLE=str(pki / "ca.pem"), SSL_CERT_FILE=str(pki / "ca.pem"))
        proc = subprocess.run([sys.executable, "-c", "from huggingface_hub import snapshot_download\n"
                               "print(snapshot_download(%r, local_dir='m'))" % TINY_REPO],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "m" / "model-00001-of-00003.safetensors").is_file()


@pytest.mark.parametrize("which", [("--tls-cert",), ("--tls-cert", "--tls-key")])
def test_tls_misconfiguration_refuses_to_start(mirror_data, tmp_path, which):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    args = [a for flag in which for a in (flag, str(bogus))]
    proc = subprocess.run([sys.executable, "-m", "autoglm_mirror", "serve", "--data", str(mirror_data), "--port", "0",
                           *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "mirror")), check=False)
    assert proc.returncode == 2
    assert ("--tls-cert and --tls-key go together" if len(which) == 1 else "cannot load the TLS certificate") in proc.stderr
