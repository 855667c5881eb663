"""Command line: `serve` the data directory, `ingest` a snapshot into it, `verify` (and repair) a snapshot."""
from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading

from . import __version__, faults
from .ingest import IngestError, ingest
from .server import Config, make_server, tls_context
from .store import Store, StoreError
from .verify import VerifyError, verify_snapshot

TOKEN_ENV = "AUTOGLM_MIRROR_TOKEN"


MIN_TOKEN_LENGTH = 16


class TokenError(ValueError):
    pass


def read_tokens(token_file: str | None) -> list[str]:
    """Tokens, each taken whole: $AUTOGLM_MIRROR_TOKEN (one token, or one a line) and --token-file (one a line,
    '#' comments). A comma is part of a token: splitting on it let a short tail like 'a' in as a token."""
    lines = os.environ.get(TOKEN_ENV, "").splitlines()
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            lines += [line for line in fh.read().splitlines() if not line.startswith("#")]
    tokens = []
    for line in lines:
        token = line.strip()
        if not token:
            continue
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or not ch.isascii() for ch in token):
            raise TokenError("a mirror token holds whitespace, control or non-ASCII characters: refused")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenError("a mirror token is shorter than %d characters: refused" % MIN_TOKEN_LENGTH)
        tokens.append(token)
    return tokens


def serve(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.data):
        print("data directory %s does not exist; create it or ingest a snapshot into it first" % args.data, file=sys.stderr)
        return 2
    try:
        tokens = read_tokens(args.token_file)
    except (TokenError, OSError) as err:
        print("bad token configuration: %s" % err, file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("--tls-cert and --tls-key go together: give both (or neither, for plain http)", file=sys.stderr)
        return 2
    tls = None
    if args.tls_cert:
        try:
            tls = tls_context(args.tls_cert, args.tls_key)
        except (ssl.SSLError, OSError) as err:
            print("cannot load the TLS certificate %s / key %s: %s" % (args.tls_cert, args.tls_key, err), file=sys.stderr)
            return 2
    if args.protected_repo and not tokens:
        print("--protected-repo needs a token: give --token-file or set %s" % TOKEN_ENV, file=sys.stderr)
        return 2
    if args.wheelhouse and not os.path.isdir(args.wheelhouse):
        print("--wheelhouse %s is not a directory: create it (or drop the option)" % args.wheelhouse, file=sys.stderr)
        return 2
    fault_config = faults.from_args(args)
    config = Config(Store(args.data), tokens=tokens, protected=args.protected_repo, faults=fault_config,
                    page_size=args.page_size, access_log=not args.quiet, idle_timeout=args.idle_timeout,
                    request_timeout=args.request_timeout, max_connections=args.max_connections,
                    wheelhouse=args.wheelhouse)
    if config.wheelhouse:
        threading.Thread(target=config.warm_wheels, name="warm-wheels", daemon=True).start()
    server = make_server(config, args.bind, args.port, tls)
    host, port = server.server_address[:2]
    # The fixture and the unit read this line to learn the port (with --port 0) and that we are up.
    print("autoglm-mirror %s listening on %s port %d (%s), data %s, %d protected pattern(s)%s"
          % (__version__, host, port, "https" if tls else "http", os.path.abspath(args.data), len(args.protected_repo),
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
                        link=args.link, force=args.force, dry_run=args.dry_run, manifest=args.manifest)
    except (IngestError, StoreError, OSError) as err:
        print("ingest failed: %s" % err, file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        result = verify_snapshot(args.data, args.repo, args.commit, src=args.src, dry_run=args.dry_run,
                                 use_cache=not args.no_cache)
    except (VerifyError, StoreError, OSError) as err:
        print("verify failed: %s" % err, file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    unrepaired = set(result["bad"] + result["missing"] + result["linked"]) - set(result["repaired"])
    return 3 if unrepaired and not args.dry_run else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm-mirror", description="Hugging Face / ModelScope compatible model mirror")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    srv = sub.add_parser("serve", help="serve the data directory over HTTP (read-only)")
    srv.add_argument("--data", required=True, help="data directory (as written by ingest)")
    srv.add_argument("--bind", default="127.0.0.1", help="address to listen on (IPv4 or IPv6)")
    srv.add_argument("--port", type=int, default=8090, help="port (0: pick a free one and print it)")
    srv.add_argument("--token-file", help="file with accepted bearer tokens, one per line, each %d+ characters without blanks "
                     "(also $%s: one token, or one per line; a comma is part of a token)" % (MIN_TOKEN_LENGTH, TOKEN_ENV))
    srv.add_argument("--protected-repo", action="append", default=[], metavar="ID_OR_GLOB",
                     help="repo id (or glob, '*' for all) that needs a bearer token; repeatable")
    srv.add_argument("--page-size", type=int, default=1000, help="tree entries per page (Link rel=next beyond)")
    srv.add_argument("--quiet", action="store_true", help="no access log")
    srv.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve https; needs --tls-key")
    srv.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    srv.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="close a keep-alive connection idle this long (default 30)")
    srv.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="a request's line, headers and body must arrive within this, counted from when they "
                          "start being awaited (after --idle-timeout at most); slower clients are cut off (default 60)")
    srv.add_argument("--max-connections", type=int, default=512, metavar="N",
                     help="open connections served at once; more get 503 with Retry-After (default 512)")
    srv.add_argument("--wheelhouse", metavar="DIR",
                     help="serve the *.whl and *.tar.gz files of DIR (and of its set folders) at /wheels/ for "
                          "pip --find-links, without a token")
    faults.add_arguments(srv)
    srv.set_defaults(func=serve)

    ing = sub.add_parser("ingest", help="add a snapshot from a local directory")
    ing.add_argument("--data", required=True)
    ing.add_argument("--repo", required=True, metavar="ORG/NAME")
    ing.add_argument("--commit", help="40-hex commit id (default: derived from the content)")
    ing.add_argument("--ref", action="append", default=[], metavar="BRANCH", help="branch to point at it (default main)")
    ing.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag to point at it")
    ing.add_argument("--src", required=True, help="directory holding the snapshot's files")
    ing.add_argument("--link", action="store_true",
                     help="accepted for old callers; files are always copied (a reflink where the filesystem can)")
    ing.add_argument("--force", action="store_true", help="replace an existing commit that has other content")
    ing.add_argument("--manifest", metavar="FILE",
                     help="the seed's verified manifest (SRC/.autoglm/manifest.json as model_fetch writes it): its files, "
                          "hashes and commit are taken instead of hashing SRC")
    ing.add_argument("--dry-run", action="store_true",
                     help="report what would change (changed, existed, copy_bytes), write nothing")
    ing.set_defaults(func=run_ingest)

    ver = sub.add_parser("verify", help="check a snapshot's files against its index; repair them with --src")
    ver.add_argument("--data", required=True)
    ver.add_argument("--repo", required=True, metavar="ORG/NAME")
    ver.add_argument("--commit", required=True, help="40-hex commit id of the snapshot")
    ver.add_argument("--src", help="verified copy of the same revision: bad, missing or hard-linked files are "
                                   "replaced from it (bad ones moved to DATA/quarantine/)")
    ver.add_argument("--dry-run", action="store_true", help="report, change nothing")
    ver.add_argument("--no-cache", action="store_true", help="rehash every file (bit rot keeps a file's identity)")
    ver.set_defaults(func=run_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
