"""The built-in server serving a vision-language model (a tiny GLM-4.1V) over real HTTP on loopback: image parts
from data:, file: and http(s) URLs, the caps, and the refusals (OpenAI-shaped 400s)."""
from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.serve import RawConnection, ServeProcess, metric, post_json, stream_events, tiny_glm4v

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return tiny_glm4v(tmp_path_factory)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory, vlm) -> Path:
    """The folder file: URLs may name, with the lab screenshot, and a secret beside it (outside)."""
    root = tmp_path_factory.mktemp("media")
    (root / "allowed").mkdir()
    (root / "allowed" / "screen.png").write_bytes(vlm.screenshot)
    (root / "secret.png").write_bytes(vlm.screenshot)
    (root / "allowed" / "link.png").symlink_to(root / "secret.png")
    return root


@pytest.fixture(scope="module")
def server(vlm, media_dir, tmp_path_factory):
    """Defaults, plus a folder for file: URLs."""
    with ServeProcess(vlm.path, args=["--allowed-local-media-path", str(media_dir / "allowed")],
                      log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        srv.wait_healthy()
        yield srv


@pytest.fixture(scope="module")
def tight(vlm, tmp_path_factory):
    """Remote fetching on, 2 images a prompt, and a small pixel cap (images over 4 x 50,000 pixels are refused)."""
    with ServeProcess(vlm.path, args=["--allow-remote-media", "--limit-images-per-prompt", "2",
                                      "--image-max-pixels", "50000"],
                      log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        srv.wait_healthy()
        yield srv


def data_url(png: bytes, media_type: str = "image/png") -> str:
    return "data:%s;base64,%s" % (media_type, base64.b64encode(png).decode())


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def messages(parts, text):
    """One user message: the image parts, then the text (Open-AutoGLM's order)."""
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def ask(srv, parts, text="What is on the screen?", **extra):
    return post_json(srv.base + URL, dict({"model": "tiny", "messages": messages(parts, text), "temperature": 0,
                                           "max_tokens": 48}, **extra))


def png(width: int, height: int, color=(40, 90, 200), mode="RGB") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height), color if mode == "RGB" else 0).save(out, "PNG")
    return out.getvalue()


def refused(status, body, param, code):
    assert status == 400, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code, error


# Answers ---------------------------------------------------------------------------------------------------
def test_a_screenshot_as_a_data_url_gets_the_lab_action(server, vlm):
    started = time.monotonic()
    status, body = ask(server, [image_part(data_url(vlm.screenshot))], vlm.instruction)
    latency = time.monotonic() - started
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == vlm.action
    # The same instruction without the screenshot gets another answer: the model read the image.
    _unused, text_only = post_json(server.base + URL, {"messages": [{"role": "user", "content": vlm.instruction}],
                                                       "temperature": 0, "max_tokens": 48})
    assert text_only["choices"][0]["message"]["content"] == vlm.no_screen_action
    with_image, without = body["usage"]["prompt_tokens"], text_only["usage"]["prompt_tokens"]
    print("prompt tokens %d with the screenshot, %d without; %.2f s" % (with_image, without, latency))
    # The image's tokens (dozens, for the lab screenshot) are counted as prompt tokens.
    assert with_image > without + 10


def test_the_text_may_come_before_the_image_and_a_system_prompt_first(server, vlm):
    chat = [{"role": "system", "content": "You are a phone agent. Answer with one action."},
            {"role": "user", "content": [{"type": "text", "text": vlm.instruction}, image_part(data_url(vlm.screenshot))]}]
    status, body = post_json(server.base + URL, {"messages": chat, "temperature": 0, "max_tokens": 48})
    assert status == 200 and body["choices"][0]["message"]["content"] == vlm.action, body


def test_streaming_with_an_image_sends_the_same_answer(server, vlm):
    status, ctype, events = stream_events(server.base + URL, {
        "messages": messages([image_part(data_url(vlm.screenshot))], vlm.instruction),
        "temperature": 0, "max_tokens": 48, "stream_options": {"include_usage": True}})
    assert status == 200 and ctype.startswith("text/event-stream") and events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == vlm.action
    _unused, plain = ask(server, [image_part(data_url(vlm.screenshot))], vlm.instruction)
    assert events[-2]["usage"] == plain["usage"]


def test_a_file_url_inside_the_allowed_folder_is_read(server, vlm, media_dir):
    _unused, by_data = ask(server, [image_part(data_url(vlm.screenshot))])
    status, by_file = ask(server, [image_part((media_dir / "allowed" / "screen.png").as_uri())])
    assert status == 200, by_file
    assert by_file["choices"][0]["message"]["content"] == by_data["choices"][0]["message"]["content"]
    assert by_file["usage"] == by_data["usage"]


@pytest.mark.parametrize("where", ["outside", "dot-dot", "symlink-out", "missing"])
def test_a_file_url_that_leads_outside_the_folder_is_refused(server, media_dir, where):
    allowed = media_dir / "allowed"
    url = {"outside": (media_dir / "secret.png").as_uri(), "dot-dot": "file://%s/../secret.png" % allowed,
           "symlink-out": (allowed / "link.png").as_uri(), "missing": (allowed / "nothing.png").as_uri()}[where]
    status, body = ask(server, [image_part(url)])
    refused(status, body, "messages[0].content[0]", "invalid_image_url")
    if where != "missing":
        assert "outside" in body["error"]["message"]


def test_file_urls_are_refused_without_an_allowed_folder(tight, media_dir):
    status, body = ask(tight, [image_part((media_dir / "allowed" / "screen.png").as_uri())])
    refused(status, body, "messages[0].content[0]", "invalid_image_url")
    assert "--allowed-local-media-path" in body["error"]["message"]


def test_http_urls_are_refused_by_default(server):
    # Nothing listens there, and nothing is fetched: the refusal names the option.
    status, body = ask(server, [image_part("http://127.0.0.1:9/screen.png")])
    refused(status, body, "messages[0].content[0]", "invalid_image_url")
    assert "--allow-remote-media" in body["error"]["message"]


@pytest.fixture
def image_host(vlm):
    """A loopback HTTP server with the screenshot at /screen.png and a redirect to a file: URL at /redirect."""

    class Host(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(vlm.screenshot)))
            self.end_headers()
            self.wfile.write(vlm.screenshot)

        def log_message(self, *args):
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % host.server_address[1]
    host.shutdown()
    host.server_close()


def test_with_allow_remote_media_an_http_image_is_fetched(tight, vlm, image_host):
    _unused, by_data = ask(tight, [image_part(data_url(vlm.screenshot))])
    status, by_http = ask(tight, [image_part(image_host + "/screen.png")])
    assert status == 200, by_http
    assert by_http["usage"] == by_data["usage"]
    status, body = ask(tight, [image_part(image_host + "/redirect")])
    refused(status, body, "messages[0].content[0]", "invalid_image_url")


def test_the_pixel_cap_scales_images_down(server, tight):
    """A 300x300 image: 11 x 11 tokens of 28 x 28 pixels under the default cap; under 50,000 pixels (which GLM-4.1V's
    processor counts as 2 x H x W) at most 50,000 / 2 / (28 x 28) = 31 tokens."""
    image = [image_part(data_url(png(300, 300)))]
    text = ask(server, [], text="hi", max_tokens=1)[1]["usage"]["prompt_tokens"]
    full = ask(server, image, text="hi", max_tokens=1)[1]["usage"]["prompt_tokens"] - text
    capped = ask(tight, image, text="hi", max_tokens=1)[1]["usage"]["prompt_tokens"] - text
    assert full >= 11 * 11 and capped <= 50000 // 2 // (28 * 28) + 2  # + the begin/end-of-image tokens


TEXTS = ["Tap the search bar", "Open the settings app and turn on airplane mode.", "hi"]


def test_image_and_text_requests_share_batches_and_each_gets_its_own_answer(server, vlm):
    """Image requests batch with each other and with text requests: prompts of different lengths (the screenshot,
    a smaller image, text only) are left-padded together, and every request gets the answer it gets alone."""
    small = png(200, 120, color=(200, 60, 20))

    def one(i):
        kind = i % 3
        if kind == 0:
            body = ask(server, [image_part(data_url(vlm.screenshot))], vlm.instruction)[1]
        elif kind == 1:
            body = ask(server, [image_part(data_url(small))], "What is on the screen?", max_tokens=12)[1]
        else:
            body = post_json(server.base + URL, {"messages": [{"role": "user", "content": TEXTS[i % len(TEXTS)]}],
                                                 "temperature": 0, "max_tokens": 12})[1]
        return body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"]

    alone = [one(i) for i in range(9)]
    assert [answer for answer, _unused in alone[0::3]] == [vlm.action] * 3
    batches = metric(server, "autoglm_serve_batches_total")
    with ThreadPoolExecutor(max_workers=9) as pool:
        assert list(pool.map(one, range(9))) == alone
    # Six of the nine carry an image: fewer batches than that means image rows shared a batch (the first request
    # runs alone while the rest arrive), else this proved only the queue.
    assert metric(server, "autoglm_serve_batches_total") - batches < 6


# Refusals --------------------------------------------------------------------------------------------------
def test_too_many_images_are_refused_before_any_is_read(server, tight, vlm):
    refused(*ask(server, [image_part(data_url(vlm.screenshot))] * 11), "messages", "too_many_images")
    # The count comes first: three unreadable images on a 2-image server are refused for their number.
    refused(*ask(tight, [image_part("data:image/png;base64,AAAA")] * 3), "messages", "too_many_images")


@pytest.mark.parametrize(("part", "code"), [
    ({"type": "image_url"}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": 5}}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,plain"}}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": "data:text/html;base64,PGI+"}}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"GIF89a" + b"\0" * 64).decode()}},
     "invalid_image"),
    ({"type": "image_url", "image_url": {"url": "ftp://127.0.0.1/screen.png"}}, "invalid_image_url"),
    ({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, "invalid_image_url"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "unsupported_content_type"),
    ({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}, "unsupported_content_type"),
], ids=["no-url", "url-not-string", "not-base64-url", "not-an-image-type", "bad-base64", "gif", "ftp", "bare-path",
        "audio", "video"])
def test_malformed_image_parts_are_refused(server, part, code):
    refused(*ask(server, [part]), "messages[0].content[0]", code)


def test_a_truncated_png_is_refused_not_a_500(server, vlm):
    refused(*ask(server, [image_part(data_url(vlm.screenshot[:len(vlm.screenshot) // 2]))]),
            "messages[0].content[0]", "invalid_image")


def test_an_extreme_aspect_ratio_is_refused_not_a_500(server):
    refused(*ask(server, [image_part(data_url(png(6000, 20)))]), "messages", "invalid_image")


def test_a_decompression_bomb_is_refused_from_its_header(tight):
    """A 1000x1000 black PNG is a few KB but declares 1,000,000 pixels, over 4 x 50,000: refused, never decoded."""
    bomb = png(1000, 1000, mode="L")
    assert len(bomb) < 10_000
    refused(*ask(tight, [image_part(data_url(bomb))]), "messages[0].content[0]", "image_too_large")


def test_an_image_over_20_mib_is_refused_before_its_base64_is_decoded(server):
    payload = "A" * (28 << 20)  # 21 MiB once decoded
    status, body = post_json(server.base + URL, {"messages": [{"role": "user", "content": [
        image_part("data:image/png;base64," + payload)]}], "max_tokens": 1})
    refused(status, body, "messages[0].content[0]", "image_too_large")


def test_the_text_of_a_request_with_images_is_still_limited_by_the_context(server, vlm):
    status, body = ask(server, [image_part(data_url(vlm.screenshot))], text="word " * 200_000, max_tokens=1)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body


def test_the_body_limit_leaves_room_for_images_but_not_more(server):
    """32 MiB more than a text model's limit: 40 MiB declared is refused before it is read."""
    conn = RawConnection(server.base, timeout=20)
    try:
        conn.send(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n{" % (URL.encode(), 40 << 20))
        status, _unused, raw = conn.response()
        assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    finally:
        conn.close()


def test_the_context_is_the_language_models(server, vlm):
    """A vision model's context is in text_config (not the top-level config, where the text model has it)."""
    context = json.loads((vlm.path / "config.json").read_text())["text_config"]["max_position_embeddings"]
    status, body = ask(server, [image_part(data_url(vlm.screenshot))], vlm.instruction, max_tokens=context)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "the %d-token context" % context in body["error"]["message"]
