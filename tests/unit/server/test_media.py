"""Where the built-in server takes images from and how big they may be (media.py), without a model."""
from __future__ import annotations

import base64
import io
import os
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "server"))
from autoglm_serve import media
from autoglm_serve.api import ApiError, parse_chat_request
from autoglm_serve.media import ImageRef, MediaError, MediaPolicy, decode_images, open_images

PIL = pytest.importorskip("PIL.Image")


def encoded(fmt: str = "PNG", size=(60, 40), mode="RGBA") -> bytes:
    out = io.BytesIO()
    PIL.new(mode, size, (10, 200, 30, 255) if mode == "RGBA" else 0).save(out, fmt)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return "data:%s;base64,%s" % (media_type, base64.b64encode(data).decode())


def load(urls, policy=None):
    refs = [ImageRef("messages[0].content[%d]" % i, url) for i, url in enumerate(urls)]
    return decode_images(refs, open_images(refs, policy or MediaPolicy()))


def refusal(urls, policy=None) -> MediaError:
    with pytest.raises(MediaError) as raised:
        load(urls, policy)
    return raised.value


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds a few bytes of pixel data: what a bomb looks like unread."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# data: URLs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_png_jpeg_and_webp_data_urls_decode_to_rgb(fmt, media_type):
    [image] = load([data_url(encoded(fmt, mode="RGBA" if fmt != "JPEG" else "RGB"), media_type)])
    assert image.mode == "RGB" and image.size == (60, 40)


@pytest.mark.parametrize(("url", "code"), [
    ("data:image/png,plain", "invalid_image_url"),
    ("data:image/svg+xml;base64,PHN2Zz4=", "invalid_image_url"),
    ("data:image/png;base64,@@@@", "invalid_image_url"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a" + bytes(64)).decode(), "invalid_image"),
    ("data:image/png;base64," + base64.b64encode(encoded()[:80]).decode(), "invalid_image"),
    ("javascript:alert(1)", "invalid_image_url"),
    ("screen.png", "invalid_image_url"),
], ids=["not-base64", "svg", "bad-base64", "gif", "truncated", "javascript", "relative"])
def test_bad_data_urls_are_refused(url, code):
    error = refusal([url])
    assert error.code == code and error.param == "messages[0].content[0]"


def test_an_image_over_the_byte_cap_is_refused_before_its_base64_is_decoded(monkeypatch):
    monkeypatch.setattr(media, "MAX_IMAGE_BYTES", 1000)
    monkeypatch.setattr(media.base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    assert refusal(["data:image/png;base64," + "A" * 1400]).code == "image_too_large"


@pytest.mark.parametrize(("width", "height"), [(4001, 5000), (100_000, 100_000)], ids=["over-ours", "over-pillows"])
def test_a_bomb_is_refused_from_its_header(width, height):
    """Over BOMB_FACTOR x 5,000,000 pixels (and, the second, over Pillow's own bomb limit): refused, not decoded."""
    error = refusal([data_url(header_only_png(width, height))])
    assert error.code == "image_too_large"


def test_the_count_is_checked_before_anything_is_read():
    error = refusal(["data:image/png;base64,@@@@"] * 3, MediaPolicy(max_images=2))
    assert error.code == "too_many_images" and error.param == "messages"


def test_without_pillow_images_are_refused_clearly(monkeypatch):
    url = data_url(encoded())
    monkeypatch.setitem(sys.modules, "PIL", None)
    error = refusal([url])
    assert error.code == "image_support_unavailable" and "Pillow" in error.message


# file: URLs ------------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "a.png").write_bytes(encoded())
    (tmp_path / "outside.png").write_bytes(encoded())
    (tmp_path / "allowed" / "out-link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "allowed" / "in-link.png").symlink_to(tmp_path / "allowed" / "a.png")
    os.mkfifo(tmp_path / "allowed" / "fifo.png")
    return tmp_path


def test_file_urls_inside_the_folder_are_read(folder):
    policy = MediaPolicy(allowed_local_path=folder / "allowed")
    images = load([(folder / "allowed" / "a.png").as_uri(), (folder / "allowed" / "in-link.png").as_uri(),
                   "file://localhost%s" % (folder / "allowed" / "a.png")], policy)
    assert [image.size for image in images] == [(60, 40)] * 3


@pytest.mark.parametrize("url", [
    "{root}/outside.png", "{root}/allowed/../outside.png", "{root}/allowed/out-link.png", "{root}/allowed/fifo.png",
    "{root}/allowed/none.png", "{root}/allowed/a%00.png", "file://other-host{root}/allowed/a.png", "/etc/passwd",
], ids=["outside", "dot-dot", "symlink-out", "fifo", "missing", "nul", "remote-host", "etc-passwd"])
def test_file_urls_anywhere_else_are_refused(folder, url):
    url = url.format(root=folder)
    url = url if url.startswith("file:") else "file://" + url
    started = time.monotonic()
    error = refusal([url], MediaPolicy(allowed_local_path=folder / "allowed"))
    assert error.code == "invalid_image_url" and time.monotonic() - started < 5  # a FIFO must not hang it


def test_file_urls_are_refused_without_a_folder(folder):
    error = refusal([(folder / "allowed" / "a.png").as_uri()])
    assert "--allowed-local-media-path" in error.message


# http(s) URLs ----------------------------------------------------------------------------------------------------
@pytest.fixture
def host():
    png = encoded()

    class Host(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/redirect-"):  # to file:///etc/passwd or ftp://...
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect-"):].replace("|", "/"))
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            if self.path == "/slow":
                for byte in png:  # a byte every 0.1 s: each read is quick, the whole is not
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.wfile.write(png)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_urls_are_refused_unless_enabled(host):
    assert "--allow-remote-media" in refusal([host + "/a.png"]).message
    [image] = load([host + "/a.png"], MediaPolicy(allow_remote=True))
    assert image.size == (60, 40)


def test_remote_images_are_bounded_in_bytes_time_and_redirects(host, monkeypatch):
    policy = MediaPolicy(allow_remote=True)
    for target in ("file:|||etc|passwd", "ftp:||127.0.0.1:9|a.png"):
        error = refusal([host + "/redirect-" + target], policy)
        assert error.code == "invalid_image_url" and ("not allowed" in error.message or "not http(s)" in error.message)
    monkeypatch.setattr(media, "REMOTE_TIMEOUT", 0.5)
    started = time.monotonic()
    assert "within" in refusal([host + "/slow"], policy).message
    assert time.monotonic() - started < 3
    monkeypatch.setattr(media, "MAX_IMAGE_BYTES", 50)
    assert refusal([host + "/a.png"], policy).code == "image_too_large"


# Parsing a request -----------------------------------------------------------------------------------------------
IMAGE_REQUEST = {"messages": [{"role": "system", "content": "agent"}, {"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "open it"}]}]}


def test_a_vision_model_gets_template_parts_and_the_urls_unread():
    messages, options = parse_chat_request(IMAGE_REQUEST, "tiny", vision=True)
    assert messages == [{"role": "system", "content": "agent"},
                        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "open it"}]}]
    assert [(ref.param, ref.url) for ref in options["images"]] == [("messages[1].content[0]", "data:image/png;base64,AAAA")]
    # Text parts alone still reach the template as one string, exactly as for a text model.
    text = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert parse_chat_request(text, "tiny", vision=True)[0] == parse_chat_request(text, "tiny")[0]


def test_a_text_model_refuses_the_image_part():
    with pytest.raises(ApiError) as raised:
        parse_chat_request(IMAGE_REQUEST, "tiny")
    error = raised.value.body()["error"]
    assert raised.value.status == 400 and error["code"] == "unsupported_content_type"
    assert error["param"] == "messages[1].content[0]" and "text-only" in error["message"]
