"""The deadlines and caps each server starts with when the unit passes nothing (CHANGELOG.md, issue 18): a changed
default is a changed security property, so it is pinned here rather than found out under load."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT / "mirror"))
from autoglm_mirror.cli import build_parser
from autoglm_serve.__main__ import parse_args


def test_builtin_server_defaults():
    args = parse_args(["--model", "/srv/models/m"])  # --model is the only argument it requires
    assert (args.idle_timeout, args.request_timeout) == (30, 30)
    assert (args.max_connections, args.backlog) == (256, 1024)


def test_mirror_defaults():
    args = build_parser().parse_args(["serve", "--data", "/srv/mirror"])  # --data is the only one it requires
    assert (args.request_timeout, args.idle_timeout) == (60, 30)
    assert args.max_connections == 512
