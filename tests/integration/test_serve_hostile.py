"""The built-in server under hostile input, over real sockets on loopback: framing, deadlines, caps, odd JSON.

Every socket has a timeout and every count is bounded (100 connections at most).
"""
from __future__ import annotations

import json
import select
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.serve import RawConnection, ServeProcess, chat_request, peak_rss_reset, post_json, request, rss_kib
from support.testmodel import tiny_model

KEY = "sk-hostile-0123456789abcdef"
AUTH = {"Authorization": "Bearer " + KEY}
PROMPT = "Open the settings app and turn on airplane mode."
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 4}
SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """Default limits (nothing aead1c7 lacks on its command line), an API key, one request per batch."""
    with ServeProcess(model_dir, args=["--max-batch", "1"], extra_env={"AUTOGLM_SERVE_API_KEY": KEY},
                      log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        srv.wait_healthy()
        yield srv


@pytest.fixture(scope="module")
def strict(model_dir, tmp_path_factory):
    """Short deadlines, 4 connections at most, and the old 32 MiB body limit (to reach the prompt counting)."""
    with ServeProcess(model_dir, args=["--idle-timeout", "2", "--request-timeout", "2", "--max-connections", "4",
                                       "--max-body-bytes", str(32 << 20)],
                      log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        srv.wait_healthy()
        yield srv


def metric(srv, name, **labels) -> float:
    text = request("GET", srv.base + "/metrics", timeout=20)[2].decode()
    want = "{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items())) if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("%s not reached within %s s" % (what, timeout))


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# Memory: an over-long prompt -----------------------------------------------------------------------------
def test_a_body_over_what_the_context_holds_is_refused_before_it_is_read(server):
    """8 MB declared, 256 KiB sent: the 413 comes without waiting for the rest (aead1c7 read up to 32 MiB first)."""
    conn = RawConnection(server.base, timeout=20)
    try:
        body = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "word " * ((8 << 20) // 5)}])).encode()
        conn.send(chat_request(body, AUTH)[:256 * 1024])
        status, headers, raw = conn.response()
        assert status == 413 and error_of(raw)["code"] == "request_too_large"
        assert headers.get("connection") == "close"
    finally:
        conn.close()


def test_a_prompt_far_over_the_context_is_refused_without_tokenizing_it_whole(strict):
    """4 MB of text in a body the limit allows: 400 context_length_exceeded, and the peak RSS barely moves
    (aead1c7 tokenized it all first: about 1 GB and 8 s for this prompt)."""
    peak_reset = peak_rss_reset(strict.proc.pid)
    before = rss_kib(strict.proc.pid)
    status, body = post_json(strict.base + "/v1/chat/completions",
                             dict(CHAT, messages=[{"role": "user", "content": "word " * ((4 << 20) // 5)}]), timeout=60)
    assert status == 400, body
    assert body["error"]["code"] == "context_length_exceeded" and body["error"]["param"] == "messages"
    assert "more than" in body["error"]["message"]
    if not peak_reset:
        pytest.skip("the kernel does not let this test reset the server's VmHWM (/proc/PID/clear_refs), so its "
                    "peak while refusing cannot be told from its peak while loading the model")
    # The acceptance (issue 18): peak RSS while refusing within 1.5x the idle RSS.
    peak = rss_kib(strict.proc.pid)["VmHWM"]
    print("idle VmRSS %.0f MiB, peak VmHWM %.0f MiB refusing the prompt" % (before["VmRSS"] / 1024, peak / 1024))
    assert peak <= 1.5 * before["VmRSS"], "peak RSS %.0f MiB is over 1.5x the idle %.0f MiB" % (
        peak / 1024, before["VmRSS"] / 1024)


def test_a_prompt_just_over_the_context_is_still_counted_exactly(server):
    status, body = post_json(server.base + "/v1/chat/completions",
                             dict(CHAT, messages=[{"role": "user", "content": "word " * 600}]), AUTH)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "more than" not in body["error"]["message"]  # close to the limit: the exact count, not the estimate


# Framing ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("request_bytes", "status"), [
    (chat_request(SMUGGLED), 401),
    (chat_request(SMUGGLED, AUTH, path="/v1/nothing"), 404),
    (chat_request(SMUGGLED, path="/health"), 405),
    (chat_request(SMUGGLED, AUTH, path="/v1/models", method="DELETE"), 405),
], ids=["401", "404", "405", "405-delete"])
def test_a_refused_requests_body_is_not_parsed_as_the_next_request(server, request_bytes, status):
    conn = RawConnection(server.base)
    try:
        conn.send(request_bytes + b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        first, _unused, raw = conn.response()
        assert first == status, raw
        second, _unused, raw = conn.response()
        assert second == 200 and json.loads(raw)["status"] == "ok", "the body was answered as a request: %r" % raw
    finally:
        conn.close()


@pytest.mark.parametrize(("headers", "status"), [
    (b"Content-Length: -1\r\n", 400),
    (b"Content-Length: abc\r\n", 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
    (b"Content-Length: 5, 6\r\n", 400),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", 413),
    (b"Transfer-Encoding: chunked\r\n", 411),
], ids=["negative", "non-numeric", "conflicting", "conflicting-list", "5000-digits", "chunked"])
def test_a_body_that_cannot_be_framed_is_refused_and_the_connection_closed(server, headers, status):
    conn = RawConnection(server.base, timeout=10)
    try:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
                  + headers + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        got, head, raw = conn.response()
        assert got == status and error_of(raw)
        assert head.get("connection") == "close"
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_a_small_refused_body_is_dropped_and_the_connection_kept(server):
    """Over the body limit (96 KiB here) but small enough to drop: 413, then the next request on the same connection."""
    conn = RawConnection(server.base)
    try:
        big = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x" * 200_000}])).encode()
        conn.send(chat_request(big, AUTH) + b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        status, head, raw = conn.response()
        assert status == 413 and error_of(raw)["code"] == "request_too_large" and head.get("connection") != "close"
        assert conn.response()[0] == 200
    finally:
        conn.close()


def test_headers_over_64_kib_get_431(server):
    conn = RawConnection(server.base)
    try:
        conn.send(b"GET /health HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000)
                                                                       for i in range(90)) + b"\r\n")
        status, _unused, raw = conn.response()
        assert status == 431 and error_of(raw)
    finally:
        conn.close()


def test_expect_100_continue_gets_a_refusal_before_the_body(server):
    conn = RawConnection(server.base, timeout=10)
    try:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n")
        status, head, raw = conn.response()
        assert status == 401 and head.get("connection") == "close"
    finally:
        conn.close()
    body = json.dumps(CHAT).encode()
    conn = RawConnection(server.base, timeout=30)
    try:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % (KEY.encode(), len(body)))
        assert conn.response(head_only=True)[0] == 100
        conn.send(body)
        status, _unused, raw = conn.response()
        assert status == 200, raw
    finally:
        conn.close()


# Capacity --------------------------------------------------------------------------------------------------
def test_a_burst_of_100_chats_gets_answers_not_resets(server):
    """Each of 100 connections made at once gets an HTTP answer: 200, or 429 when the queue is full."""
    barrier = threading.Barrier(100)
    outcomes = []

    def client() -> None:
        barrier.wait(timeout=30)
        try:
            conn = RawConnection(server.base, timeout=120)
            try:
                conn.send(chat_request(CHAT, AUTH))
                outcomes.append(conn.response()[0])
            finally:
                conn.close()
        except OSError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _unused in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(outcomes) == 100
    assert set(outcomes) <= {200, 429}, sorted(map(str, outcomes))
    assert 200 in outcomes


def test_connections_over_the_cap_get_a_fast_503_then_close(strict):
    holders = [RawConnection(strict.base, timeout=10) for _unused in range(4)]
    try:
        for conn in holders:
            conn.send(b"GET /health HTTP/1.1\r\nHost: test\r\n")  # a head that is never finished
        time.sleep(0.5)  # accepted (no /metrics poll: it would be the fifth connection), well within the 2 s deadline
        extra = RawConnection(strict.base, timeout=10)
        try:
            extra.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            status, head, raw = extra.response()
            assert status == 503 and head.get("retry-after") and error_of(raw)["code"] == "too_many_connections"
            assert extra.closed_by_server()
        finally:
            extra.close()
    finally:
        for conn in holders:
            conn.close()
    wait_for(lambda: request("GET", strict.base + "/health", timeout=10)[0] == 200, what="served again")


# Deadlines -------------------------------------------------------------------------------------------------
def test_a_slow_client_is_cut_at_the_request_deadline(strict):
    """A header line every 0.5 s never finishes the head: after --request-timeout (2 s) it gets 408 and a close."""
    conn = RawConnection(strict.base, timeout=10)
    try:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\n")
        for i in range(40):  # 20 s of trickle at most, until the server says something
            if select.select([conn.sock], [], [], 0.5)[0]:
                break
            conn.send(b"X-Slow-%d: x\r\n" % i)
        else:
            pytest.fail("the slow client was still being served after 20 s")
        status, _unused, raw = conn.response()
        assert status == 408 and error_of(raw)
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_an_idle_connection_is_closed_silently(strict):
    conn = RawConnection(strict.base, timeout=10)
    try:
        assert conn.closed_by_server()  # within the 10 s socket timeout, with no bytes sent
    finally:
        conn.close()


def test_a_request_half_sent_then_silent_is_closed(strict):
    conn = RawConnection(strict.base, timeout=10)
    try:
        conn.send(chat_request(CHAT)[:-5])
        status, _unused, _unused = conn.response()
        assert status == 408 and conn.closed_by_server()
    finally:
        conn.close()


# Lower findings --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "param"), [
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "top_p"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1e999}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"x": [1, NaN]}}', "metadata.x[1]"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', "seed"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": -9223372036854775809}', "seed"),
    (b'{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', "messages[0].content"),
    (b"[" * 40000 + b"]" * 40000, None),
], ids=["nan-temperature", "nan-top-p", "infinite-temperature", "overflow-temperature", "nan-anywhere",
        "seed-over-64-bits", "seed-under-64-bits", "lone-surrogate", "deep-nesting"])
def test_odd_json_gets_a_400_naming_the_param(server, body, param):
    conn = RawConnection(server.base, timeout=30)
    try:
        conn.send(chat_request(body, AUTH) + b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _unused, raw = conn.response()
        assert status == 400, raw
        assert error_of(raw)["param"] == param
        assert conn.response()[0] == 200  # and the connection still serves
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("PUT", "/v1/chat/completions", 405, "POST"),
    ("DELETE", "/health", 405, "GET, HEAD"),
    ("PATCH", "/v1/anything", 404, None),
    ("FOO", "/metrics", 405, "GET, HEAD"),
], ids=["put", "delete", "patch-unknown-path", "unknown-method"])
def test_other_methods_get_json_405_or_404(server, method, path, status, allow):
    got, head, raw = request(method, server.base + path, headers=AUTH, timeout=20)
    assert got == status and head["content-type"] == "application/json"
    assert error_of(raw)["code"] == ("method_not_allowed" if status == 405 else "not_found")
    assert head.get("allow") == allow


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/metrics"])
def test_head_answers_like_get_without_the_body(server, path):
    _unused, get_head, get_body = request("GET", server.base + path, headers=AUTH, timeout=20)
    conn = RawConnection(server.base, timeout=20)
    try:
        conn.send(b"HEAD %s HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer %s\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n"
                  % (path.encode(), KEY.encode()))
        status, head, _unused = conn.response(head_only=True)
        assert status == 200 and head["content-type"] == get_head["content-type"]
        if path != "/metrics":  # metrics change between two requests
            assert int(head["content-length"]) == len(get_body)
        status, _unused, raw = conn.response()  # the next response starts right after the head: no body was sent
        assert status == 200 and json.loads(raw)["status"] == "ok"
    finally:
        conn.close()


def test_a_client_that_leaves_has_its_queued_generation_cancelled(server):
    """With one request per batch: A waits behind a long X; A's client leaves; A never runs (aead1c7 ran it)."""
    gone = {"endpoint": "/v1/chat/completions", "status": "499"}
    batches, left = metric(server, "autoglm_serve_batches_total"), metric(server, "autoglm_serve_requests_total", **gone)
    long_chat = dict(CHAT, max_tokens=400)
    x_result = {}
    x = threading.Thread(target=lambda: x_result.update(answer=post_json(server.base + "/v1/chat/completions",
                                                                         long_chat, AUTH)))
    x.start()
    wait_for(lambda: metric(server, "autoglm_serve_batches_total") > batches, what="X running")
    conn = RawConnection(server.base)
    conn.send(chat_request(long_chat, AUTH))
    wait_for(lambda: metric(server, "autoglm_serve_queue_depth") >= 1, what="A queued")
    conn.close()
    wait_for(lambda: metric(server, "autoglm_serve_requests_total", **gone) > left, what="A counted as gone")
    running = x.is_alive()
    x.join(timeout=120)
    assert x_result["answer"][0] == 200
    if not running:
        pytest.skip("X finished before A's departure was seen: nothing proved about A")
    time.sleep(0.5)
    assert metric(server, "autoglm_serve_batches_total") - batches == 1, "A ran although its client had left"


def test_aborted_clients_leave_one_line_each_not_a_traceback(server):
    for payload in (b"GET /health HTTP/1.1\r\nHost: te", chat_request(CHAT, AUTH)[:40], b""):
        conn = RawConnection(server.base)
        conn.send(payload)
        time.sleep(0.1)
        conn.reset()
    conn = RawConnection(server.base)
    conn.send(chat_request(dict(CHAT, max_tokens=200), AUTH))
    time.sleep(0.3)
    conn.reset()
    time.sleep(1.0)
    assert request("GET", server.base + "/health", timeout=20)[0] == 200
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
