"""HTTP layer of the built-in server: OpenAI-shaped routes on a stdlib ThreadingHTTPServer.

Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions (JSON or SSE).
Errors use OpenAI's body {"error": {"message", "type", "param", "code"}}. The optional API key
guards /v1/* only (probes and Prometheus scrape /health and /metrics without it, as with vLLM).
"""
from __future__ import annotations

import hmac
import json
import logging
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .engine import Engine, Job, QueueFull, Sampling
from .metrics import Registry

LOG = logging.getLogger("autoglm_serve")
MAX_BODY = 32 * 1024 * 1024
ROLES = ("system", "user", "assistant", "tool", "developer")
ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

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
    return registry


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, served_model_name: str,
                 api_key: str | None = None, default_max_tokens: int = 512) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.engine = engine
        self.served_model_name = served_model_name
        self.api_key = api_key or None
        self.default_max_tokens = default_max_tokens
        self.started = int(time.time())
        self.metrics = new_registry()
        self.metrics.add_callback(self._sampled)

    def _sampled(self) -> list[tuple[str, dict[str, str], float]]:
        samples = [("autoglm_serve_model_loaded", {}, 1.0 if self.engine.ready.is_set() else 0.0),
                   ("autoglm_serve_queue_depth", {}, float(self.engine.queue_depth())),
                   ("autoglm_serve_batches_total", {}, float(self.engine.batches)),
                   ("autoglm_serve_batched_requests_total", {}, float(self.engine.batched_requests))]
        if self.engine.load_seconds is not None:
            samples.append(("autoglm_serve_model_load_seconds", {}, self.engine.load_seconds))
        return samples + self.engine.gpu_memory()


def _text_of(content: Any, index: int) -> str:
    """A message's text; content parts other than text (images, audio) are refused: this is a text model."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(400, "messages[%d].content must be a string or a list of content parts" % index,
                       param="messages[%d].content" % index)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image", "input_audio", "video_url", "file"):
            raise ApiError(400, "this model is text-only: messages[%d].content[%d] is a '%s' part, which it cannot read; "
                           "send text parts only, or serve a vision model with the vllm or sglang backend" % (index, j, kind),
                           param="messages[%d].content[%d]" % (index, j), code="unsupported_content_type")
        else:
            raise ApiError(400, "messages[%d].content[%d] is not a valid content part (need {\"type\": \"text\", \"text\": ...})"
                           % (index, j), param="messages[%d].content[%d]" % (index, j))
    return "".join(texts)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value > high or value < low or (low_open and value == low):
        raise ApiError(400, "%s must be a number in %s%s, %s]; got %r" % (name, "(" if low_open else "[", low, high, value), param=name)
    return float(value)


def parse_chat_request(body: Any, served_model_name: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate an OpenAI chat completion request; return the messages and the options the engine uses."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model_name:
        raise ApiError(404, "the model '%s' does not exist here; this server serves '%s'" % (model, served_model_name),
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required: a non-empty list of {role, content}", param="messages")
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, "messages[%d] needs a role, one of %s" % (i, ", ".join(ROLES)), param="messages[%d].role" % i)
        chat.append({"role": message["role"], "content": _text_of(message.get("content"), i)})
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    return chat, {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "stop": tuple(s for s in stops if s),
        "seed": seed,
        "stream": stream,
        "include_usage": bool(isinstance(options, dict) and options.get("include_usage")),
    }


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "autoglm-serve"

    # Plumbing -------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        # Request line and status only: headers (Authorization) are never logged.
        LOG.info("%s %s", self.address_string(), format % args)

    def _endpoint(self) -> str:
        path = self.path.split("?", 1)[0]
        return path if path in ENDPOINTS else "other"

    def _count(self, status: int) -> None:
        endpoint = self._endpoint()
        self.server.metrics.inc("autoglm_serve_requests_total", endpoint=endpoint, status=str(status))
        self.server.metrics.observe("autoglm_serve_request_duration_seconds", time.monotonic() - self._t0, endpoint=endpoint)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)
        self._count(status)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(given.encode(), key.encode())

    def _read_body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise ApiError(400, "bad Content-Length header") from exc
        if length > MAX_BODY:
            raise ApiError(413, "request body over %d bytes" % MAX_BODY)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "the request body is not valid JSON: %s" % exc, code="invalid_json") from exc

    def _dispatch(self, method: str) -> None:
        self._t0 = time.monotonic()
        path = self.path.split("?", 1)[0]
        routes = {("GET", "/health"): self._health, ("GET", "/metrics"): self._metrics,
                  ("GET", "/v1/models"): self._models, ("POST", "/v1/chat/completions"): self._chat}
        try:
            route = routes.get((method, path))
            if route is None:
                known = any(p == path for (_, p) in routes)
                raise ApiError(405 if known else 404, "%s %s is not served here" % (method, path),
                               code="method_not_allowed" if known else "not_found")
            if path.startswith("/v1/") and not self._authorized():
                raise ApiError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
            route()
        except ApiError as err:
            # A body too large to read leaves bytes on the socket: close rather than parse them as a request.
            self.close_connection = self.close_connection or err.status == 413
            self._json(err.status, err.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

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
        body = self._read_body()
        messages, opts = parse_chat_request(body, self.server.served_model_name)
        if not engine.ready.is_set():
            raise ApiError(503, "the model is still loading; retry when /health answers 200",
                           type_="server_error", code="model_loading")
        prompt = engine.render_prompt(messages)
        room = int(engine.max_model_len or 0) - len(prompt)
        if room < 1:
            raise ApiError(400, "the prompt is %d tokens; this model's context is %d tokens" % (len(prompt), engine.max_model_len),
                           param="messages", code="context_length_exceeded")
        wanted = opts["max_tokens"] or self.server.default_max_tokens
        if opts["max_tokens"] and opts["max_tokens"] > room:
            raise ApiError(400, "max_tokens %d plus the %d-token prompt exceed the %d-token context"
                           % (opts["max_tokens"], len(prompt), engine.max_model_len), param="max_tokens",
                           code="context_length_exceeded")
        sampling = Sampling(max_tokens=min(wanted, room), temperature=opts["temperature"], top_p=opts["top_p"],
                            stop=opts["stop"], seed=opts["seed"])
        job = Job(prompt_ids=prompt, sampling=sampling, stream=opts["stream"])
        try:
            engine.submit(job)
        except QueueFull as exc:
            raise ApiError(429, "the generation queue is full; retry later", type_="rate_limit_error", code="queue_full") from exc
        meta = {"id": "chatcmpl-%s" % uuid.uuid4().hex, "created": int(time.time()), "model": self.server.served_model_name}
        if opts["stream"]:
            self._stream(job, meta, opts["include_usage"])
        else:
            self._complete(job, meta)

    def _finished(self, job: Job, result: Any) -> None:
        metrics = self.server.metrics
        metrics.inc("autoglm_serve_prompt_tokens_total", result.prompt_tokens)
        metrics.inc("autoglm_serve_generation_tokens_total", result.completion_tokens)
        if job.started_at is not None:
            metrics.observe("autoglm_serve_queue_wait_seconds", job.started_at - job.enqueued_at)

    def _complete(self, job: Job, meta: dict[str, Any]) -> None:
        kind, value = job.events.get()
        while kind == "delta":
            kind, value = job.events.get()
        if kind == "error":
            raise ApiError(500, "generation failed: %s" % value, type_="server_error", code="generation_failed")
        self._finished(job, value)
        self._json(200, dict(meta, object="chat.completion", choices=[{
            "index": 0, "message": {"role": "assistant", "content": value.text},
            "finish_reason": value.finish_reason, "logprobs": None}],
            usage={"prompt_tokens": value.prompt_tokens, "completion_tokens": value.completion_tokens,
                   "total_tokens": value.prompt_tokens + value.completion_tokens}))

    def _stream(self, job: Job, meta: dict[str, Any], include_usage: bool) -> None:
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
        except (BrokenPipeError, ConnectionResetError):
            # The client went away: stop generating for it.
            job.cancelled.set()
            status = 499
        finally:
            self._count(status)

