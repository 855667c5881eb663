"""Each fault and shaping control of the mirror takes effect (and only where it is aimed)."""
from __future__ import annotations

import hashlib
import http.client
import socket
import time

import pytest
from support.mirror import TINY_REPO

SHARD = "model-00001-of-00003.safetensors"
SHARD_PATH = "/%s/resolve/main/%s" % (TINY_REPO, SHARD)
CONFIG_PATH = "/%s/resolve/main/config.json" % TINY_REPO


def get(url: str, path: str, headers: dict | None = None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    try:
        body = resp.read()
    finally:
        conn.close()
    return resp, body


def read_until_closed(url: str, path: str) -> tuple[int, int, bytes]:
    """Raw socket GET: (declared Content-Length, body bytes received, body) even if the server hangs up early."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and len(body) >= content_length(head):
                break
    head, _unused, body = data.partition(b"\r\n\r\n")
    return content_length(head), len(body), body


def content_length(head: bytes) -> int:
    return int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))


@pytest.mark.parametrize(("status", "retry_after"), [(503, "7"), (429, "7"), (500, None)])
def test_fail_first_k_requests_then_serve(mirror_factory, status, retry_after):
    server = mirror_factory(fail_first=2, fail_status=status, retry_after=7)
    for _unused in range(2):
        resp, _unused = get(server.url, SHARD_PATH)
        assert resp.status == status and resp.getheader("Retry-After") == retry_after
    assert get(server.url, SHARD_PATH)[0].status == 200
    # The API endpoints are not counted (default --fail-scope files): the client can still list.
    assert get(server.url, "/api/models/%s/revision/main" % TINY_REPO)[0].status == 200


def test_fail_scope_all_also_fails_the_api(mirror_factory):
    server = mirror_factory(fail_first=1, fail_status=503, fail_scope="all")
    assert get(server.url, "/api/models/%s/revision/main" % TINY_REPO)[0].status == 503
    assert get(server.url, "/api/models/%s/revision/main" % TINY_REPO)[0].status == 200


def test_drop_after_n_bytes_cuts_the_first_response_only(mirror_factory, tiny_model_dir):
    server = mirror_factory(drop_after=100_000, drop_times=1)
    size = (tiny_model_dir / SHARD).stat().st_size
    declared, received, _unused = read_until_closed(server.url, SHARD_PATH)
    assert declared == size and received == 100_000
    declared, received, body = read_until_closed(server.url, SHARD_PATH)
    assert received == size and body == (tiny_model_dir / SHARD).read_bytes()


def test_drop_after_applies_only_to_fault_path_matches(mirror_factory, tiny_model_dir):
    server = mirror_factory(drop_after=10, fault_path="*.safetensors")
    declared, received, _unused = read_until_closed(server.url, CONFIG_PATH)
    assert received == declared == (tiny_model_dir / "config.json").stat().st_size
    assert read_until_closed(server.url, SHARD_PATH)[1] == 10


def test_corrupt_path_flips_bytes_for_matching_files(mirror_factory, tiny_model_dir):
    server = mirror_factory(corrupt_path="*.safetensors", corrupt_times=1)
    good = (tiny_model_dir / SHARD).read_bytes()
    _unused, bad = get(server.url, SHARD_PATH)
    assert len(bad) == len(good) and bad != good
    assert sum(a != b for a, b in zip(bad[:4096], good[:4096])) == 1
    assert hashlib.sha256(get(server.url, SHARD_PATH)[1]).digest() == hashlib.sha256(good).digest()
    assert get(server.url, CONFIG_PATH)[1] == (tiny_model_dir / "config.json").read_bytes()


def test_corruption_also_hits_ranged_responses(mirror_factory, tiny_model_dir):
    server = mirror_factory(corrupt_path=SHARD)
    good = (tiny_model_dir / SHARD).read_bytes()
    resp, body = get(server.url, SHARD_PATH, {"Range": "bytes=1000-1999"})
    assert resp.status == 206 and len(body) == 1000 and body != good[1000:2000]


def test_ignore_range_answers_200_with_the_whole_body(mirror_factory, tiny_model_dir):
    server = mirror_factory(ignore_range=True)
    resp, body = get(server.url, SHARD_PATH, {"Range": "bytes=10-19"})
    assert resp.status == 200 and resp.getheader("Content-Range") is None
    assert body == (tiny_model_dir / SHARD).read_bytes()


def test_rate_limit_caps_a_connection(mirror_factory, tiny_model_dir):
    # A lower bound only: 400 kB at 1 MB/s cannot arrive in less than ~0.4 s if the cap works.
    server = mirror_factory(rate_limit=1_000_000)
    start = time.monotonic()
    resp, body = get(server.url, SHARD_PATH, {"Range": "bytes=0-399999"})
    elapsed = time.monotonic() - start
    assert resp.status == 206 and len(body) == 400_000
    assert elapsed >= 0.35


def test_first_byte_delay_holds_the_response(mirror_factory):
    server = mirror_factory(first_byte_delay=1.0)
    start = time.monotonic()
    assert get(server.url, CONFIG_PATH)[0].status == 200
    assert time.monotonic() - start >= 0.95


def test_faults_are_announced_and_off_by_default(mirror, mirror_factory):
    assert "FAULTS" not in mirror.log()
    server = mirror_factory(fail_first=1)
    assert "FAULTS: " in server.log() and "fail_first=1" in server.log()


def test_environment_variables_switch_faults_on_only_with_the_flag(mirror_data, tmp_path):
    from support.mirror import MirrorProcess

    env = {"AUTOGLM_MIRROR_FAIL_FIRST": "1", "AUTOGLM_MIRROR_FAIL_STATUS": "429"}
    with MirrorProcess(mirror_data, log_dir=tmp_path, env=env) as server:
        assert get(server.url, CONFIG_PATH)[0].status == 200  # an injected env line alone does nothing
    with MirrorProcess(mirror_data, log_dir=tmp_path, env=env, faults_from_env=True) as server:
        assert get(server.url, CONFIG_PATH)[0].status == 429
        assert get(server.url, CONFIG_PATH)[0].status == 200
