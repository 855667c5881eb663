"""Command line: `serve` the data directory, `ingest` a snapshot into it."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import __version__, faults
from .ingest import IngestError, ingest
from .server import Config, make_server
from .store import Store, StoreError

TOKEN_ENV = "AUTOGLM_MIRROR_TOKEN"


def read_tokens(token_file: str | None) -> list[str]:
    """Tokens from --token-file (one per line, '#' comments) and $AUTOGLM_MIRROR_TOKEN (comma-separated)."""
    tokens = [t.strip() for t in os.environ.get(TOKEN_ENV, "").split(",") if t.strip()]
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            tokens += [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    return tokens


def serve(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.data):
        print("data directory %s does not exist; create it or ingest a snapshot into it first" % args.data, file=sys.stderr)
        return 2
    tokens = read_tokens(args.token_file)
    if args.protected_repo and not tokens:
        print("--protected-repo needs a token: give --token-file or set %s" % TOKEN_ENV, file=sys.stderr)
        return 2
    fault_config = faults.from_args(args)
    config = Config(Store(args.data), tokens=tokens, protected=args.protected_repo, faults=fault_config,
                    page_size=args.page_size, access_log=not args.quiet)
    server = make_server(config, args.bind, args.port)
    host, port = server.server_address[:2]
    # The fixture and the unit read this line to learn the port (with --port 0) and that we are up.
    print("autoglm-mirror %s listening on %s port %d, data %s, %d protected pattern(s)%s"
          % (__version__, host, port, os.path.abspath(args.data), len(args.protected_repo),
             ", FAULTS: " + fault_config.describe() if fault_config.active else ""), file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    try:
        result = ingest(args.data, args.repo, args.src, commit=args.commit, branches=args.ref, tags=args.tag,
                        link=args.link, force=args.force, dry_run=args.dry_run)
    except (IngestError, StoreError, OSError) as err:
        print("ingest failed: %s" % err, file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm-mirror", description="Hugging Face / ModelScope compatible model mirror")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    srv = sub.add_parser("serve", help="serve the data directory over HTTP (read-only)")
    srv.add_argument("--data", required=True, help="data directory (as written by ingest)")
    srv.add_argument("--bind", default="127.0.0.1", help="address to listen on (IPv4 or IPv6)")
    srv.add_argument("--port", type=int, default=8090, help="port (0: pick a free one and print it)")
    srv.add_argument("--token-file", help="file with accepted bearer tokens, one per line (also $%s)" % TOKEN_ENV)
    srv.add_argument("--protected-repo", action="append", default=[], metavar="ID_OR_GLOB",
                     help="repo id (or glob, '*' for all) that needs a bearer token; repeatable")
    srv.add_argument("--page-size", type=int, default=1000, help="tree entries per page (Link rel=next beyond)")
    srv.add_argument("--quiet", action="store_true", help="no access log")
    faults.add_arguments(srv)
    srv.set_defaults(func=serve)

    ing = sub.add_parser("ingest", help="add a snapshot from a local directory")
    ing.add_argument("--data", required=True)
    ing.add_argument("--repo", required=True, metavar="ORG/NAME")
    ing.add_argument("--commit", help="40-hex commit id (default: derived from the content)")
    ing.add_argument("--ref", action="append", default=[], metavar="BRANCH", help="branch to point at it (default main)")
    ing.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag to point at it")
    ing.add_argument("--src", required=True, help="directory holding the snapshot's files")
    ing.add_argument("--link", action="store_true", help="hard-link files instead of copying when possible")
    ing.add_argument("--force", action="store_true", help="replace an existing commit that has other content")
    ing.add_argument("--dry-run", action="store_true", help="hash and report what would change, write nothing")
    ing.set_defaults(func=run_ingest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
