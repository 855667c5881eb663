"""HTTP layer of the built-in server: OpenAI-shaped routes on a stdlib ThreadingHTTPServer.

Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions (JSON or SSE).
Chat messages take text parts, and image_url parts when the model reads images (media.py says from where and
how big); a text-only model answers an image part with a 400. Errors use OpenAI's body
{"error": {"message", "type", "param", "code"}}. The optional API key
guards /v1/* only (probes and Prometheus scrape /health and /metrics without it, as with vLLM).
"""
from __future__ import annotations

import contextlib
import hmac
import http.client
import io
import json
import logging
import math
import queue
import re
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .connection import Linger, RequestReader
from .engine import Engine, Job, PromptTooLong, QueueFull, Sampling
from .media import ImageRef, MediaError, MediaPolicy, decode_images, image_url_of, open_images
from .metrics import Registry

LOG = logging.getLogger("autoglm_serve")
# The body limit by default: what a full context could take as JSON, generously (a token is a few characters
# on average; JSON escapes take up to 6 bytes a character), plus room for the request's structure.
BODY_BYTES_PER_TOKEN = 64
BODY_BASE_BYTES = 64 * 1024
# And for a vision model, room for a prompt's images as base64 data: URLs (a phone screenshot's PNG is 1-3 MB).
BODY_IMAGE_BYTES = 32 << 20
HEAD_LIMIT = 64 * 1024 + io.DEFAULT_BUFFER_SIZE  # request line and headers (plus one read-ahead buffer)
DISCARD_LIMIT = 1 << 20  # a refused body up to this size is read and dropped so the connection can stay open
RESULT_POLL_SECONDS = 0.2  # how often a waiting non-streaming request checks that its client is still there
SEED_RANGE = range(-(1 << 63), 1 << 64)  # what torch.manual_seed accepts
DIGITS = re.compile(r"[0-9]+")
ROLES = ("system", "user", "assistant", "tool", "developer")
ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, close: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.close, self.headers = close, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def new_registry() -> Registry:
    registry = Registry()
    registry.declare("autoglm_serve_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
    registry.declare("autoglm_serve_request_duration_seconds", "histogram", "Time from request to last byte, by endpoint.")
    registry.declare("autoglm_serve_queue_wait_seconds", "histogram", "Time a chat completion waited for the generation worker.")
    registry.declare("autoglm_serve_prompt_tokens_total", "counter", "Prompt tokens processed.")
    registry.declare("autoglm_serve_generation_tokens_total", "counter", "Tokens generated.")
    registry.declare("autoglm_serve_model_load_seconds", "gauge", "Seconds the model took to load.")
    registry.declare("autoglm_serve_model_loaded", "gauge", "1 once the model is loaded and requests are served.")
    registry.declare("autoglm_serve_queue_depth", "gauge", "Chat completions waiting for the generation worker.")
    registry.declare("autoglm_serve_batches_total", "counter", "Batches the generation worker ran.")
    registry.declare("autoglm_serve_batched_requests_total", "counter",
                     "Chat completions in those batches (divide by batches for the mean batch size).")
    registry.declare("autoglm_serve_gpu_memory_allocated_bytes", "gauge", "CUDA memory allocated by tensors, per GPU.")
    registry.declare("autoglm_serve_gpu_memory_reserved_bytes", "gauge", "CUDA memory reserved by the allocator, per GPU.")
    registry.declare("autoglm_serve_connections", "gauge", "Client connections open (at most --max-connections).")
    registry.declare("autoglm_serve_connections_refused_total", "counter",
                     "Connections answered 503 at once because --max-connections were open.")
    return registry


def busy_response() -> bytes:
    """The whole answer to a connection over --max-connections, sent without reading its request."""
    body = json.dumps(ApiError(503, "too many connections; retry later", type_="server_error",
                               code="too_many_connections").body()).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n" % len(body))
    return head.encode() + body


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, served_model_name: str,
                 api_key: str | None = None, default_max_tokens: int = 512, max_body_bytes: int | None = None,
                 idle_timeout: float = 30.0, request_timeout: float = 30.0, max_connections: int = 256,
                 backlog: int = 1024, media: MediaPolicy | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # The listen backlog: connections the kernel holds until accept(); the standard library's 5 turns a burst
        # of clients into resets instead of answers.
        self.request_queue_size = backlog
        self.engine = engine
        self.served_model_name = served_model_name
        self.api_key = api_key or None
        self.default_max_tokens = default_max_tokens
        self.max_body_bytes = max_body_bytes
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.max_connections = max_connections
        self.media = media or MediaPolicy()
        self.started = int(time.time())
        self.metrics = new_registry()
        self.metrics.add_callback(self._sampled)
        self.linger = Linger()
        self._busy = busy_response()
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def max_body(self) -> int:
        """Bytes a chat request may send: --max-body-bytes, or what the model's context (and images) can hold."""
        if self.max_body_bytes:
            return self.max_body_bytes
        images = BODY_IMAGE_BYTES if self.engine.vision and self.media.max_images else 0
        return BODY_BASE_BYTES + BODY_BYTES_PER_TOKEN * int(self.engine.max_model_len or 4096) + images

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            admitted = self._open < self.max_connections
            self._open += admitted
        if admitted:
            super().process_request(request, client_address)  # a thread for the connection
            return
        # Over the cap: a fast 503 from the accept thread, no thread, then a graceful close.
        self.metrics.inc("autoglm_serve_connections_refused_total")
        try:
            request.setblocking(False)
            request.send(self._busy)
        except OSError:
            pass
        self.linger.close(request)

    def shutdown_request(self, request: Any) -> None:
        """End of an admitted connection (its thread is done)."""
        with self._open_lock:
            self._open -= 1
        self.linger.close(request)

    def _sampled(self) -> list[tuple[str, dict[str, str], float]]:
        samples = [("autoglm_serve_model_loaded", {}, 1.0 if self.engine.ready.is_set() else 0.0),
                   ("autoglm_serve_connections", {}, float(self._open)),
                   ("autoglm_serve_queue_depth", {}, float(self.engine.queue_depth())),
                   ("autoglm_serve_batches_total", {}, float(self.engine.batches)),
                   ("autoglm_serve_batched_requests_total", {}, float(self.engine.batched_requests))]
        if self.engine.load_seconds is not None:
            samples.append(("autoglm_serve_model_load_seconds", {}, self.engine.load_seconds))
        return samples + self.engine.gpu_memory()


NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "video_url", "file")


def _content_of(content: Any, index: int, images: list[ImageRef] | None) -> str | list[dict[str, str]]:
    """A message's content for the chat template: its text, or, from a vision model's request (images is a list)
    with image parts, template parts ({"type": "text"/"image"}) with each image's url appended to images."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(400, "messages[%d].content must be a string or a list of content parts" % index,
                       param="messages[%d].content" % index)
    parts: list[dict[str, str]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        param = "messages[%d].content[%d]" % (index, j)
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and images is not None:
            try:
                images.append(ImageRef(param, image_url_of(part, param)))
            except MediaError as exc:
                raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
            parts.append({"type": "image"})
        elif kind in NON_TEXT_PARTS:
            if images is None:
                why = "this model is text-only: %s is a '%s' part, which it cannot read; send text parts only, or " \
                      "serve a vision-language model (one with a vision_config)" % (param, kind)
            else:
                why = "%s is a '%s' part; this server reads text and image_url parts only" % (param, kind)
            raise ApiError(400, why, param=param, code="unsupported_content_type")
        else:
            raise ApiError(400, "%s is not a valid content part (need {\"type\": \"text\", \"text\": ...})" % param,
                           param=param)
    if any(part["type"] == "image" for part in parts):
        return parts
    return "".join(part["text"] for part in parts)


def _check_unicode(text: str, index: int) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape: no tokenizer takes it
            raise ApiError(400, "messages[%d].content is not valid Unicode: %s" % (index, exc.reason),
                           param="messages[%d].content" % index) from exc


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    # Compared before any float(): an integer too large for a float (400 digits) is out of range, not a 500.
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
            or value > high or value < low or (low_open and value == low)):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ApiError(400, "%s must be a number in %s%s, %s]; got %s" % (name, "(" if low_open else "[", low, high, shown),
                       param=name)
    return float(value)


def parse_chat_request(body: Any, served_model_name: str, vision: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate an OpenAI chat completion request; return the messages and the options the engine uses.

    For a vision model (vision=True), options["images"] lists the image parts' urls, in prompt order, unread."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model_name:
        raise ApiError(404, "the model '%s' does not exist here; this server serves '%s'" % (model, served_model_name),
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required: a non-empty list of {role, content}", param="messages")
    chat, images = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, "messages[%d] needs a role, one of %s" % (i, ", ".join(ROLES)), param="messages[%d].role" % i)
        content = _content_of(message.get("content"), i, images if vision else None)
        for text in [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]:
            _check_unicode(text, i)
        chat.append({"role": message["role"], "content": content})
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ApiError(400, "max_tokens must be a positive integer; got %r" % (max_tokens,), param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise ApiError(400, "stop must be a string or a list of up to 4 strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed not in SEED_RANGE):
        raise ApiError(400, "seed must be an integer in [-2**63, 2**64 - 1]", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    return chat, {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "stop": tuple(s for s in stops if s),
        "seed": seed,
        "stream": stream,
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
        "images": images,
    }


def _path_of_nonfinite(value: Any) -> str | None:
    """Where the first NaN/infinity is, as a param name (temperature, messages[0].content); walked without recursion."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path or "body"
        if isinstance(item, dict):
            stack.extend(("%s.%s" % (path, key) if path else str(key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(("%s[%d]" % (path, i), child) for i, child in reversed(list(enumerate(item))))
    return None


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; 400 for what json.loads accepts but JSON is not (NaN, Infinity, 1e999) or too deep."""
    nonfinite = []

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            nonfinite.append(text)
        return value

    try:
        body = json.loads(raw, parse_constant=number, parse_float=number)
    except RecursionError as exc:
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "the request body is not valid JSON: %s" % exc, code="invalid_json") from exc
    if nonfinite:
        place = _path_of_nonfinite(body)
        raise ApiError(400, "%s is %s, not a finite number (NaN and infinities are not JSON)" % (place, nonfinite[0]),
                       param=place)
    return body


class ClientGone(ConnectionAbortedError):
    """The client closed its connection before its answer was ready."""


class Handler(BaseHTTPRequestHandler):
    """One connection. Framing rule: a request's declared body leaves the socket (read, or dropped when small)
    before it is answered; what cannot be framed is refused and the connection closed."""

    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "autoglm-serve"

    # Plumbing -------------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the standard library's rfile has no deadlines; ours wraps the same socket
        self.connection.settimeout(self.server.idle_timeout)
        self.reader = RequestReader(self.connection, self.server.idle_timeout, self.server.request_timeout, HEAD_LIMIT)
        self.rfile = io.BufferedReader(self.reader)

    def log_message(self, format: str, *args: Any) -> None:
        # Request line and status only: headers (Authorization) are never logged; control characters escaped.
        LOG.info("%s %s", self.address_string(), (format % args).encode("unicode_escape").decode("ascii"))

    def handle_one_request(self) -> None:
        """One request, with the standard library's method dispatch replaced by _dispatch (JSON for every method)."""
        self.reader.begin_request()
        self.path, self.command, self.raw_requestline, self._unread, self._expect_continue = "", None, b"", 0, False
        self._t0, self._counted, self._responded = time.monotonic(), False, False
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            self._t0 = time.monotonic()
            if not self.parse_request():
                return
            self.reader.end_head()
            self._dispatch()
            self.wfile.flush()
        except http.client.HTTPException as exc:  # the head over HEAD_LIMIT while reading the request line
            self.send_error(431, explain=str(exc))
        except socket.timeout as exc:
            self.close_connection = True
            if self.reader.started and not self._responded:
                LOG.info("%s request timed out: %s", self.address_string(), exc)
                self._answer_quietly(408, "the request did not arrive within %g s" % self.server.request_timeout)
        except OSError as exc:  # reset, broken pipe, a body cut short: one line, no traceback
            self.close_connection = True
            LOG.info("%s connection lost: %s", self.address_string(), exc or type(exc).__name__)
            if self.raw_requestline and not self._counted:
                self._count(499)

    def _answer_quietly(self, status: int, message: str) -> None:
        with contextlib.suppress(OSError):
            self.send_error(status, explain=message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (bad request line, headers too large) in OpenAI's JSON, then close."""
        self.close_connection = True
        self._unread = 0
        text = explain or message or self.responses.get(code, ("error",))[0]
        self._json(code, ApiError(code, text, code="bad_request" if code == 400 else None).body())

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def handle_expect_100(self) -> bool:
        # "100 Continue" only once a route wants the body (_read_body); a refusal answers at once instead.
        self._expect_continue = True
        return True

    def _endpoint(self) -> str:
        path = self.path.split("?", 1)[0]
        return path if path in ENDPOINTS else "other"

    def _count(self, status: int) -> None:
        self._counted = True
        endpoint = self._endpoint()
        self.server.metrics.inc("autoglm_serve_requests_total", endpoint=endpoint, status=str(status))
        self.server.metrics.observe("autoglm_serve_request_duration_seconds", time.monotonic() - self._t0, endpoint=endpoint)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self._settle_body()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._count(status)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(given.encode(), key.encode())

    # Framing --------------------------------------------------------------------------------------
    def _frame(self) -> int:
        """The body length the request declares; what cannot be framed is refused, and the connection closed."""
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "Transfer-Encoding is not supported: send the body with a Content-Length",
                           code="length_required", close=True)
        values = {v.strip() for header in self.headers.get_all("Content-Length", []) for v in header.split(",")}
        if not values:
            return 0
        if len(values) > 1 or not all(DIGITS.fullmatch(v) for v in values):
            raise ApiError(400, "bad Content-Length header: %s" % ", ".join(sorted(values))[:100],
                           code="bad_content_length", close=True)
        digits = values.pop().lstrip("0") or "0"
        return int(digits) if len(digits) <= 18 else 1 << 62  # longer is past any limit (and int() refuses 4300+)

    def _settle_body(self) -> None:
        """Before answering: drop a declared body not read yet, or close when it is too big to drop (or the
        client waits for 100 Continue and may never send it)."""
        if self._unread:
            if self._unread <= DISCARD_LIMIT and not self._expect_continue:
                while self._unread:
                    got = len(self.rfile.read(min(self._unread, 65536)))
                    if not got:
                        raise ClientGone("the body ended early")
                    self._unread -= got
            else:
                self.close_connection = True
                self._unread = 0
        self.reader.end_request()

    def _read_body(self) -> Any:
        """The one body reader: at most max_body() bytes, within the request deadline, then parsed as JSON."""
        limit = self.server.max_body()
        if self._unread > limit:
            raise ApiError(413, "the request body is %d bytes; this server takes at most %d (the context holds %s tokens)"
                           % (self._unread, limit, self.server.engine.max_model_len), code="request_too_large")
        if self._expect_continue and self._unread:
            self.send_response_only(100)
            self.end_headers()
            self._expect_continue = False
        raw = self.rfile.read(self._unread) if self._unread else b""
        if len(raw) < self._unread:
            raise ClientGone("the body ended after %d of %d bytes" % (len(raw), self._unread))
        self._unread = 0
        self.reader.end_request()
        return parse_json(raw)

    def _client_gone(self) -> bool:
        """Whether the client closed its side (EOF or reset) while it waits for an answer."""
        try:
            readable, _unused, _unused = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _dispatch(self) -> None:
        method, path = self.command, self.path.split("?", 1)[0]
        routes = {("GET", "/health"): self._health, ("GET", "/metrics"): self._metrics,
                  ("GET", "/v1/models"): self._models, ("POST", "/v1/chat/completions"): self._chat}
        try:
            self._unread = self._frame()
            if not self._unread:
                self.reader.end_request()
            # HEAD is GET without the body (_send leaves it out).
            route = routes.get(("GET" if method == "HEAD" else method, path))
            if route is None:
                allowed = sorted(m for (m, p) in routes if p == path)
                if allowed:
                    allow = ", ".join(allowed + (["HEAD"] if "GET" in allowed else []))
                    raise ApiError(405, "%s %s is not served here" % (method, path), code="method_not_allowed",
                                   headers={"Allow": allow})
                raise ApiError(404, "%s %s is not served here" % (method, path), code="not_found")
            if path.startswith("/v1/") and not self._authorized():
                raise ApiError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
            route()
        except ApiError as err:
            self.close_connection = self.close_connection or err.close
            if err.close:
                self._unread = 0
            self._json(err.status, err.body(), err.headers)
        except OSError:
            raise
        except Exception:  # a bug: one traceback in the log, a JSON 500 to the client
            LOG.exception("%s %s failed", method, path)
            if not self._responded:
                self.close_connection = True
                self._unread = 0
                self._json(500, ApiError(500, "internal error", type_="server_error").body())

    # Routes ---------------------------------------------------------------------------------------
    def _health(self) -> None:
        engine = self.server.engine
        if engine.ready.is_set():
            self._json(200, {"status": "ok", "model": self.server.served_model_name})
        else:
            self._json(503, {"status": "loading", "model": self.server.served_model_name})

    def _metrics(self) -> None:
        self._send(200, self.server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _models(self) -> None:
        self._json(200, {"object": "list", "data": [{
            "id": self.server.served_model_name, "object": "model", "created": self.server.started,
            "owned_by": "autoglm.deploy", "root": self.server.engine.model_path}]})

    def _chat(self) -> None:
        engine = self.server.engine
        if not engine.ready.is_set():
            raise ApiError(503, "the model is still loading; retry when /health answers 200",
                           type_="server_error", code="model_loading", headers={"Retry-After": "5"})
        body = self._read_body()
        messages, opts = parse_chat_request(body, self.server.served_model_name, vision=engine.vision)
        context = int(engine.max_model_len or 0)
        prompt, image_inputs = self._prompt(messages, opts["images"], context)
        room = context - len(prompt)
        if room < 1:
            raise ApiError(400, "the prompt is %d tokens; this model's context is %d tokens" % (len(prompt), context),
                           param="messages", code="context_length_exceeded")
        wanted = opts["max_tokens"] or self.server.default_max_tokens
        if opts["max_tokens"] and opts["max_tokens"] > room:
            raise ApiError(400, "max_tokens %d plus the %d-token prompt exceed the %d-token context"
                           % (opts["max_tokens"], len(prompt), context), param="max_tokens",
                           code="context_length_exceeded")
        sampling = Sampling(max_tokens=min(wanted, room), temperature=opts["temperature"], top_p=opts["top_p"],
                            stop=opts["stop"], seed=opts["seed"], frequency_penalty=opts["frequency_penalty"],
                            presence_penalty=opts["presence_penalty"])
        job = Job(prompt_ids=prompt, sampling=sampling, stream=opts["stream"], image_inputs=image_inputs)
        try:
            engine.submit(job)
        except QueueFull as exc:
            raise ApiError(429, "the generation queue is full; retry later", type_="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from exc
        meta = {"id": "chatcmpl-%s" % uuid.uuid4().hex, "created": int(time.time()), "model": self.server.served_model_name}
        if opts["stream"]:
            self._stream(job, meta, opts["include_usage"])
        else:
            self._complete(job, meta)

    def _prompt(self, messages: list[dict[str, Any]], refs: list[ImageRef], context: int) -> tuple[list[int], Any]:
        """The prompt's ids (image tokens included) and its images' inputs for generate (None without images).

        Cheapest refusals first: the images' count, bytes and declared sizes, then the text's length, and only then
        the decoding of the images and the processor's work."""
        engine, policy = self.server.engine, self.server.media
        try:
            if not refs:
                return engine.render_prompt(messages, limit=context), None
            opened = open_images(refs, policy)
            text = engine.chat_text(messages, limit=context)
            images = decode_images(refs, opened)
            try:
                return engine.encode_images(text, images, policy.processor_size())
            except ValueError as exc:  # the processor's refusals, e.g. an aspect ratio over 200
                raise MediaError("the images could not be processed: %s" % exc, "messages", "invalid_image") from exc
        except MediaError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        except PromptTooLong as exc:
            raise ApiError(400, "the prompt is more than %d tokens; this model's context is %d tokens" % (exc.at_least, context),
                           param="messages", code="context_length_exceeded") from exc

    def _finished(self, job: Job, result: Any) -> None:
        metrics = self.server.metrics
        metrics.inc("autoglm_serve_prompt_tokens_total", result.prompt_tokens)
        metrics.inc("autoglm_serve_generation_tokens_total", result.completion_tokens)
        if job.started_at is not None:
            metrics.observe("autoglm_serve_queue_wait_seconds", job.started_at - job.enqueued_at)

    def _result(self, job: Job) -> tuple[str, Any]:
        """Wait for a non-streaming job's end; if the client leaves meanwhile, cancel the job (the worker skips it
        while queued, or closes its row at the next token) and give up."""
        while True:
            try:
                kind, value = job.events.get(timeout=RESULT_POLL_SECONDS)
            except queue.Empty:
                if self._client_gone():
                    job.cancelled.set()
                    raise ClientGone("the client left before its answer was ready") from None
                continue
            if kind != "delta":
                return kind, value

    def _complete(self, job: Job, meta: dict[str, Any]) -> None:
        kind, value = self._result(job)
        if kind == "error":
            raise ApiError(500, "generation failed: %s" % value, type_="server_error", code="generation_failed")
        self._finished(job, value)
        self._json(200, dict(meta, object="chat.completion", choices=[{
            "index": 0, "message": {"role": "assistant", "content": value.text},
            "finish_reason": value.finish_reason, "logprobs": None}],
            usage={"prompt_tokens": value.prompt_tokens, "completion_tokens": value.completion_tokens,
                   "total_tokens": value.prompt_tokens + value.completion_tokens}))

    def _stream(self, job: Job, meta: dict[str, Any], include_usage: bool) -> None:
        self._settle_body()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the body ends when the connection closes
        self.end_headers()
        self.close_connection = True
        status = 200

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            payload = dict(meta, object="chat.completion.chunk",
                           choices=[{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra)
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

        try:
            chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = job.events.get()
                if kind == "delta":
                    chunk({"content": value})
                    continue
                if kind == "error":
                    status = 500
                    err = ApiError(500, "generation failed: %s" % value, type_="server_error", code="generation_failed")
                    self.wfile.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
                else:
                    self._finished(job, value)
                    chunk({}, value.finish_reason)
                    if include_usage:
                        usage = {"prompt_tokens": value.prompt_tokens, "completion_tokens": value.completion_tokens,
                                 "total_tokens": value.prompt_tokens + value.completion_tokens}
                        payload = dict(meta, object="chat.completion.chunk", choices=[], usage=usage)
                        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                break
        except OSError as exc:
            # The client went away (or stopped reading for --idle-timeout): stop generating for it.
            job.cancelled.set()
            status = 499
            self.close_connection = True
            LOG.info("%s stream ended early: %s", self.address_string(), exc or type(exc).__name__)
        finally:
            self._count(status)
