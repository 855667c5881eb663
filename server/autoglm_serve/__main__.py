"""Command line of the built-in server: ``python -m autoglm_serve --model DIR [--port 8000] ...``.

The API key is read from the environment (AUTOGLM_SERVE_API_KEY, set through the unit's EnvironmentFile),
never from argv, which any local user can read in /proc.

Vision-language models (GLM-4.1V / AutoGLM-Phone: a vision_config in config.json) read image_url parts:
data: URLs always; file: URLs only inside --allowed-local-media-path (symlinks resolved; none by default);
http(s) URLs only with --allow-remote-media (off by default). At most --limit-images-per-prompt images
(default 10, as vLLM's --limit-mm-per-prompt image=10), each scaled down by the processor to
--image-max-pixels (default 5,000,000; GLM-4.1V counts it as 2 x height x width); an image over 20 MiB
or declaring over 4x --image-max-pixels is refused before it is decoded. Needs Pillow in the venv.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .api import Server
from .engine import Engine
from .media import MIN_PIXELS, MediaPolicy

LOG = logging.getLogger("autoglm_serve")
API_KEY_ENV = "AUTOGLM_SERVE_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="autoglm_serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local directory with config.json, weights and tokenizer (never a hub id)")
    parser.add_argument("--served-model-name", help="name clients send as 'model' (default: the directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype; auto is bfloat16 on GPUs, float32 on CPUs")
    parser.add_argument("--max-model-len", type=int, help="context length (default: the model's max_position_embeddings)")
    parser.add_argument("--max-queue", type=int, default=64, help="chat completions that may wait; more get 429")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="waiting chat completions decoded together in one generate (1: one at a time)")
    parser.add_argument("--batch-wait-ms", type=float, default=10,
                        help="under concurrent load, how long a batch may wait for the clients of the last one")
    parser.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-body-bytes", type=int, default=0,
                        help="largest chat request body; more gets 413 (default: 64 KiB + 64 bytes per context token)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="client connections open at once; more get a fast 503 with Retry-After (default %(default)s)")
    parser.add_argument("--backlog", type=int, default=1024,
                        help="listen backlog: connections the kernel queues before they are accepted (default %(default)s)")
    parser.add_argument("--idle-timeout", type=float, default=30,
                        help="seconds a connection may stay silent (keep-alive, or mid-request) before it is closed")
    parser.add_argument("--request-timeout", type=float, default=30,
                        help="seconds from a request's first byte to its last header and body byte; then 408")
    parser.add_argument("--allowed-local-media-path", type=Path,
                        help="folder whose images requests may name as file:// URLs (default: none, file: URLs refused)")
    parser.add_argument("--allow-remote-media", action="store_true",
                        help="fetch http(s) image URLs (at most 20 MiB within 10 s each); off by default: the server "
                             "would fetch any address a client names")
    parser.add_argument("--limit-images-per-prompt", type=int, default=10,
                        help="images one request may carry; more get 400 (default %(default)s)")
    parser.add_argument("--image-max-pixels", type=int, default=5_000_000,
                        help="pixels the processor scales each image down to (GLM-4.1V: size.longest_edge; default "
                             "%(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    args = parser.parse_args(argv)
    if args.max_body_bytes < 0:
        parser.error("--max-body-bytes must be 0 (from the context) or more, got %d" % args.max_body_bytes)
    for name in ("idle_timeout", "request_timeout"):
        if not getattr(args, name) > 0:
            parser.error("--%s must be more than 0 seconds" % name.replace("_", "-"))
    for name in ("max_batch", "max_queue", "max_connections", "backlog"):
        if getattr(args, name) < 1:
            parser.error("--%s must be 1 or more, got %d" % (name.replace("_", "-"), getattr(args, name)))
    if args.limit_images_per_prompt < 0:
        parser.error("--limit-images-per-prompt must be 0 (no images) or more, got %d" % args.limit_images_per_prompt)
    if args.image_max_pixels < MIN_PIXELS:
        parser.error("--image-max-pixels must be %d or more, got %d" % (MIN_PIXELS, args.image_max_pixels))
    if args.allowed_local_media_path is not None and not args.allowed_local_media_path.is_dir():
        parser.error("--allowed-local-media-path %s is not a directory" % args.allowed_local_media_path)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The weights are local and verified: no hub lookups, no progress bars in the journal.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        LOG.error("%s has no config.json: --model must be a local model directory (the weights role puts one at "
                  "<root>/<name>/current)", model)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine(str(model), device=args.device, dtype=args.dtype, max_queue=args.max_queue,
                    max_model_len=args.max_model_len, max_batch=args.max_batch,
                    batch_wait=args.batch_wait_ms / 1000)
    server = Server((args.host, args.port), engine, args.served_model_name or model.resolve().name,
                    api_key=os.environ.get(API_KEY_ENV) or None, default_max_tokens=args.default_max_tokens,
                    max_body_bytes=args.max_body_bytes or None, idle_timeout=args.idle_timeout,
                    request_timeout=args.request_timeout, max_connections=args.max_connections, backlog=args.backlog,
                    media=MediaPolicy(allowed_local_path=args.allowed_local_media_path,
                                      allow_remote=args.allow_remote_media, max_images=args.limit_images_per_prompt,
                                      max_pixels=args.image_max_pixels))
    # Serve /health (503) while the model loads, so probes can tell "loading" from "down".
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    LOG.info("listening on %s:%d (model %s, API key %s)", args.host, args.port, server.served_model_name,
             "required" if server.api_key else "not required")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        engine.load()
    except Exception as exc:
        LOG.error("could not load the model from %s: %s: %s", model, type(exc).__name__, exc)
        server.shutdown()
        return 1
    stop.wait()
    LOG.info("stopping")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
