"""_http_download pieces on real files and a real loopback HTTP server: intervals, the frontier hasher,
the ranges record, redaction, Retry-After, backoff, and a FileDownload resuming from a planted record."""
from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import time

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _http_download as hd

BLOB = random.Random(7).randbytes(3 << 20)


def test_intervals_merge_and_report_gaps():
    done = hd.Intervals()
    for a, b in [(10, 20), (30, 40), (20, 30), (50, 60), (55, 70), (0, 5)]:
        done.add(a, b)
    assert done.items() == [[0, 5], [10, 40], [50, 70]]
    assert done.total() == 55
    assert done.missing(80) == [(5, 10), (40, 50), (70, 80)]
    assert hd.Intervals().missing(3) == [(0, 3)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frontier_hasher_hashes_out_of_order_pieces_in_file_order(tmp_path, seed):
    path = tmp_path / "part"
    path.write_bytes(b"\0" * len(BLOB))
    pieces = [(a, min(len(BLOB), a + 100_000)) for a in range(0, len(BLOB), 100_000)]
    random.Random(seed).shuffle(pieces)
    fd = os.open(path, os.O_RDWR)
    try:
        hasher = hd.FrontierHasher(fd, len(BLOB), ["sha256", "git_sha1"])
        threads = []
        for a, b in pieces:
            def write(a=a, b=b):
                os.pwrite(fd, BLOB[a:b], a)
                hasher.written(a, memoryview(BLOB)[a:b])
            threads.append(threading.Thread(target=write))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        digests = hasher.finish()
    finally:
        os.close(fd)
    assert digests["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert digests["git_sha1"] == hashlib.sha1(b"blob %d\0" % len(BLOB) + BLOB).hexdigest()
    assert hasher.frontier == len(BLOB) and hasher.read_back < len(BLOB)


def test_frontier_hasher_reads_recorded_ranges_back_first(tmp_path):
    path = tmp_path / "part"
    path.write_bytes(BLOB[:1000] + b"\0" * (len(BLOB) - 1000))
    fd = os.open(path, os.O_RDWR)
    try:
        hasher = hd.FrontierHasher(fd, len(BLOB), ["sha256"], done=[(0, 1000)])
        os.pwrite(fd, BLOB[1000:], 1000)
        hasher.written(1000, BLOB[1000:])
        assert hasher.finish()["sha256"] == hashlib.sha256(BLOB).hexdigest()
        assert hasher.read_back == 1000
    finally:
        os.close(fd)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pw@hub.example.com/a/b?x=1", "https://hub.example.com/a/b?x=1"),
    ("http://h:8090/f?token=abc&Revision=main", "http://h:8090/f?token=%2A%2A%2A&Revision=main"),
    ("http://[::1]:80/x?sig=s", "http://[::1]:80/x?sig=%2A%2A%2A"),
])
def test_redact_url(url, shown):
    assert hd.redact_url(url) == shown


def test_retry_after_seconds_and_http_date():
    assert hd.parse_retry_after("7") == 7.0
    assert 8 <= hd.parse_retry_after(formatdate(time() + 10, usegmt=True)) <= 10
    assert hd.parse_retry_after("soon") is None and hd.parse_retry_after(None) is None


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    delays = [hd.backoff_delay(3, 0.5, 30) for _unused in range(200)]
    assert all(0 <= d <= 4.0 for d in delays) and max(delays) > 2.0 and min(delays) < 2.0
    assert all(hd.backoff_delay(20, 0.5, 30) <= 30 for _unused in range(50))
    assert hd.backoff_delay(0, 0.5, 30, retry_after=12) == 12
    assert hd.backoff_delay(0, 0.5, 30, retry_after=9999, max_retry_after=60) == 60


class BlobHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        start, end = 0, len(BLOB) - 1
        rng = self.headers.get("Range")
        if rng:
            first, last = rng.split("=")[1].split("-")
            start, end = int(first), int(last or end)
        body = BLOB[start:end + 1]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, len(BLOB)))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.served.append((start, end + 1, self.headers.get("Authorization")))


@pytest.fixture
def blob_server():
    BlobHandler.served = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), BlobHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/blob" % server.server_address[1]
    server.shutdown()
    server.server_close()


def plant_part(dest, done, identity):
    part = str(dest) + ".part"
    with open(part, "wb") as handle:
        handle.write(b"\0" * len(BLOB))
    with open(part, "r+b") as handle:
        for a, b in done:
            handle.seek(a)
            handle.write(BLOB[a:b])
    with open(part + ".ranges", "w") as handle:
        json.dump({"format": 1, "identity": identity, "done": [list(x) for x in done]}, handle)


def test_file_download_resumes_from_a_planted_record(blob_server, tmp_path):
    dest = tmp_path / "blob.bin"
    sha = hashlib.sha256(BLOB).hexdigest()
    done = [(0, 1 << 20), (2 << 20, (2 << 20) + 4096)]
    plant_part(dest, done, {"size": len(BLOB), "sha256": sha, "git_sha1": None})
    client = hd.Client(hd.Settings(connections=4, chunk_size=256 << 10))
    lab = hd.Credential("s3cret", blob_server, allow_insecure=True)  # plain http: only because it says so
    result = hd.FileDownload(client, blob_server, str(dest), size=len(BLOB), sha256=sha, credential=lab).run()
    assert dest.read_bytes() == BLOB and result["resumed_bytes"] == (1 << 20) + 4096
    assert result["fetched_bytes"] == len(BLOB) - result["resumed_bytes"]
    fetched = hd.Intervals([(a, b) for a, b, _unused in BlobHandler.served])
    assert fetched.total() == result["fetched_bytes"] and all(auth == "Bearer s3cret" for *_unused, auth in BlobHandler.served)
    assert not os.path.exists(str(dest) + ".part") and not os.path.exists(str(dest) + ".part.ranges")


def test_a_record_for_other_content_is_discarded(blob_server, tmp_path):
    dest = tmp_path / "blob.bin"
    sha = hashlib.sha256(BLOB).hexdigest()
    plant_part(dest, [(0, 1 << 20)], {"size": len(BLOB), "sha256": "0" * 64, "git_sha1": None})
    result = hd.FileDownload(hd.Client(hd.Settings(connections=2, chunk_size=1 << 20)), blob_server, str(dest),
                             size=len(BLOB), sha256=sha).run()
    assert result["resumed_bytes"] == 0 and result["fetched_bytes"] == len(BLOB) and dest.read_bytes() == BLOB


def test_a_wrong_expected_hash_never_reaches_the_final_path(blob_server, tmp_path):
    dest = tmp_path / "blob.bin"
    download = hd.FileDownload(hd.Client(hd.Settings(connections=2, chunk_size=1 << 20, hash_retries=1)), blob_server,
                               str(dest), size=len(BLOB), sha256="f" * 64)
    with pytest.raises(hd.DownloadError) as err:
        download.run()
    assert err.value.kind == "hash" and "tried 2 time(s)" in str(err.value)
    assert not dest.exists() and not os.path.exists(str(dest) + ".part")


def test_a_size_mismatch_is_refused(blob_server, tmp_path):
    download = hd.FileDownload(hd.Client(hd.Settings(connections=1, retries=0)), blob_server,
                               str(tmp_path / "x"), size=len(BLOB) + 10, sha256="f" * 64)
    with pytest.raises(hd.DownloadError) as err:
        download.run()
    assert err.value.kind == "size" and not (tmp_path / "x").exists()


def test_progress_writes_a_status_file(tmp_path):
    status = tmp_path / "status.json"
    progress = hd.Progress(total_bytes=100, files_total=2, status_file=str(status), interval=0)
    progress.resumed(20)
    progress.add(30, "a")
    data = json.loads(status.read_text())
    assert data["bytes_done"] == 50 and data["bytes_total"] == 100 and data["bytes_fetched"] == 30
    assert data["state"] == "running" and "eta_s" in data and "rate_bytes_per_s" in data


@pytest.mark.parametrize(("url", "sent"), [
    ("https://hub.example:443/api/x", True),          # the same origin, the port written out
    ("https://HUB.example/other/path", True),
    ("http://hub.example/api/x", False),              # a downgrade to http on the same host
    ("http://hub.example:443/api/x", False),          # ... even on the same port
    ("https://hub.example:8443/api/x", False),        # another port
    ("https://cdn.example/api/x", False),             # another host
])
def test_a_credential_goes_only_to_its_own_origin_over_https(url, sent):
    credential = hd.Credential("s3cret", "https://hub.example")
    assert bool(credential.header_for(url, verified_tls=True)) is sent
    assert credential.header_for(url, verified_tls=False) == {}  # never to an unverified peer
    assert "s3cret" not in repr(credential)


def test_plain_http_gets_a_token_only_when_that_endpoint_allows_it():
    assert hd.Credential("t", "http://mirror:8090").header_for("http://mirror:8090/x", True) == {}
    lab = hd.Credential("t", "http://mirror:8090", allow_insecure=True)
    assert lab.header_for("http://mirror:8090/x", True) == {"Authorization": "Bearer t"}
    assert lab.header_for("http://mirror:8091/x", True) == {}


class _Body:
    def __init__(self, data: bytes, length: str | None = None):
        self.data, self.length = data, length

    def getheader(self, name):
        return self.length if name == "Content-Length" else None

    def read(self, n):
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_read_bounded_refuses_past_the_limit_declared_or_not():
    assert hd.read_bounded(_Body(b"x" * 100), 100, "w") == b"x" * 100
    for body in (_Body(b"x" * 101), _Body(b"", length="101")):
        with pytest.raises(hd.DownloadError) as err:
            hd.read_bounded(body, 100, "listing")
        assert err.value.kind == "too_large" and "the 100 " in err.value.message
