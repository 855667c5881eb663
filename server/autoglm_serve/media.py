"""Images in chat requests, for vision-language models: where they may come from, how big they may be, decoding.

Sources (an ``image_url`` part's url):
  data:image/png|jpeg|webp;base64,...   always taken;
  file:///path                          only inside --allowed-local-media-path (none by default: refused),
                                        after resolving symlinks, so no link leads out of that folder;
  http:// and https://                  only with --allow-remote-media (off by default: the server would fetch
                                        whatever address a client names), at most MAX_IMAGE_BYTES within
                                        REMOTE_TIMEOUT seconds, redirects only to http(s).
Caps, all checked for every image of a prompt before any is decoded: --limit-images-per-prompt images, then
MAX_IMAGE_BYTES encoded bytes each, then the size the image's header declares (at most BOMB_FACTOR times
--image-max-pixels: a few KB of PNG can declare gigapixels). The processor then scales each image down to
--image-max-pixels (see processor_size).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 << 20  # encoded bytes per image: a 5-megapixel RGBA PNG that does not compress at all
BOMB_FACTOR = 4  # an image may declare up to this many times --image-max-pixels; more is refused unread
REMOTE_TIMEOUT = 10.0  # seconds for one remote image, connection to last byte
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DATA_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
# GLM-4.1V's processor on transformers 5.x ignores max_pixels and resizes by size; in pixels despite the names
# (shortest_edge the fewest, longest_edge the most). The same dict the inference_service role gives vLLM.
MIN_PIXELS = 12544


class MediaError(ValueError):
    """A refused image: the API answers it with a 400 naming param and code."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_path: Path | None = None  # the folder file: URLs may name; None refuses them all
    allow_remote: bool = False
    max_images: int = 10
    max_pixels: int = 5_000_000

    def processor_size(self) -> dict[str, int]:
        return {"shortest_edge": MIN_PIXELS, "longest_edge": self.max_pixels}


@dataclass
class ImageRef:
    """One image part of a request: where it sits (for error messages) and its url."""

    param: str
    url: str


def image_url_of(part: dict[str, Any], param: str) -> str:
    """The url of an OpenAI image part: {"type": "image_url", "image_url": {"url": ...}} (or a bare string)."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise MediaError("%s is not a valid image part (need {\"type\": \"image_url\", \"image_url\": {\"url\": ...}})"
                         % param, param, "invalid_image_url")
    return url


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MediaError("this server cannot read images: Pillow is not installed in its venv", "messages",
                         "image_support_unavailable") from None
    return Image


def _data_url(ref: ImageRef) -> bytes:
    head, comma, payload = ref.url.partition(",")
    media_type, _unused, encoding = head[len("data:"):].partition(";")
    if not comma or encoding.lower() != "base64" or media_type.lower() not in DATA_TYPES:
        raise MediaError("%s: a data: URL must be data:image/png|jpeg|webp;base64,..." % ref.param, ref.param,
                         "invalid_image_url")
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:  # before decoding the base64
        raise _too_big(ref, len(payload) * 3 // 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("%s: the data: URL is not valid base64" % ref.param, ref.param, "invalid_image_url") from None


def _too_big(ref: ImageRef, size: int) -> MediaError:
    return MediaError("%s is %d bytes or more; an image may have at most %d" % (ref.param, size, MAX_IMAGE_BYTES),
                      ref.param, "image_too_large")


def _file_url(ref: ImageRef, policy: MediaPolicy) -> bytes:
    if policy.allowed_local_path is None:
        raise MediaError("%s: file: URLs are refused; the server takes them only inside --allowed-local-media-path"
                         % ref.param, ref.param, "invalid_image_url")
    parts = urllib.parse.urlsplit(ref.url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise MediaError("%s: a file: URL must be file:///absolute/path" % ref.param, ref.param, "invalid_image_url")
    # Resolved first (symlinks, ..), then compared: nothing outside the folder is opened or even looked for.
    try:
        path = Path(urllib.parse.unquote(parts.path, errors="strict")).resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, bad percent-encoding, a symlink loop (3.11: RuntimeError)
        raise MediaError("%s is not a usable file path" % ref.param, ref.param, "invalid_image_url") from None
    if not path.is_relative_to(policy.allowed_local_path.resolve()):
        raise MediaError("%s is outside the folder this server reads images from" % ref.param, ref.param,
                         "invalid_image_url")
    try:
        # O_NONBLOCK: a FIFO in the folder must not hang the request; only regular files are read.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise MediaError("%s is not a regular file" % ref.param, ref.param, "invalid_image_url")
            if info.st_size > MAX_IMAGE_BYTES:
                raise _too_big(ref, info.st_size)
            return handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise MediaError("%s cannot be read: %s" % (ref.param, exc.strerror or type(exc).__name__), ref.param,
                         "invalid_image_url") from None


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError("redirected to a URL that is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _remote_url(ref: ImageRef, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise MediaError("%s: http(s) image URLs are refused (the server fetches none unless started with "
                         "--allow-remote-media); send the image as a data: URL" % ref.param, ref.param, "invalid_image_url")
    deadline = time.monotonic() + REMOTE_TIMEOUT
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    chunks, size = [], 0
    try:
        with opener.open(ref.url, timeout=REMOTE_TIMEOUT) as response:
            # read1 returns what has arrived: the socket timeout bounds each read, the deadline the whole
            # (a slow trickle); read(n) would wait for n bytes.
            while chunk := response.read1(65536):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise _too_big(ref, size)
                if time.monotonic() > deadline:
                    raise TimeoutError("not fetched within %g s" % REMOTE_TIMEOUT)
                chunks.append(chunk)
    except MediaError:
        raise
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors; a malformed URL a ValueError
        raise MediaError("%s could not be fetched: %s" % (ref.param, exc), ref.param, "invalid_image_url") from None
    return b"".join(chunks)


def fetch(ref: ImageRef, policy: MediaPolicy) -> bytes:
    """The image's encoded bytes, from a source the policy allows, at most MAX_IMAGE_BYTES."""
    scheme = ref.url.split(":", 1)[0].lower() if ":" in ref.url else ""
    if scheme == "data":
        data = _data_url(ref)
    elif scheme == "file":
        data = _file_url(ref, policy)
    elif scheme in ("http", "https"):
        data = _remote_url(ref, policy)
    else:
        raise MediaError("%s: image URLs must be data:, file: or http(s): URLs" % ref.param, ref.param,
                         "invalid_image_url")
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_big(ref, len(data))
    return data


def open_header(ref: ImageRef, data: bytes, policy: MediaPolicy) -> Any:
    """The image opened lazily (Pillow reads only the header): format and declared size checked, pixels not decoded."""
    image_module = _pillow()
    try:
        image = image_module.open(io.BytesIO(data), formats=list(FORMATS))
    except image_module.DecompressionBombError:
        raise MediaError("%s declares far too many pixels" % ref.param, ref.param, "image_too_large") from None
    except (OSError, ValueError):
        raise MediaError("%s is not a PNG, JPEG or WebP image" % ref.param, ref.param, "invalid_image") from None
    width, height = image.size
    if width * height > BOMB_FACTOR * policy.max_pixels:
        raise MediaError("%s is %dx%d pixels; this server takes at most %d pixels an image (it scales them down to %d)"
                         % (ref.param, width, height, BOMB_FACTOR * policy.max_pixels, policy.max_pixels),
                         ref.param, "image_too_large")
    return image


def decode(ref: ImageRef, image: Any) -> Any:
    """The pixels, as RGB (what the processors expect; drops alpha and palettes)."""
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data; Pillow raises SyntaxError for some
        raise MediaError("%s could not be decoded: %s" % (ref.param, exc), ref.param, "invalid_image") from None


def open_images(refs: list[ImageRef], policy: MediaPolicy) -> list[Any]:
    """All images of one prompt, counted, fetched and their headers checked, but not decoded (see decode_images)."""
    if len(refs) > policy.max_images:
        raise MediaError("the prompt has %d images; this server takes at most %d (--limit-images-per-prompt)"
                         % (len(refs), policy.max_images), "messages", "too_many_images")
    return [open_header(ref, fetch(ref, policy), policy) for ref in refs]


def decode_images(refs: list[ImageRef], images: list[Any]) -> list[Any]:
    return [decode(ref, image) for ref, image in zip(refs, images)]
