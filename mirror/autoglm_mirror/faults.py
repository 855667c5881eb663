"""Fault and shaping controls for tests and benchmarks: all off unless a flag sets them.

The environment variables below count only with --faults-from-env.

Each control applies to file downloads (`resolve` and the ModelScope file endpoint) whose repo path
matches --fault-path (a glob, default every file); --fail-scope all extends the injected failures to
the API endpoints too. Flags and their environment variables:

    --rate-limit BYTES/S     AUTOGLM_MIRROR_RATE_LIMIT      cap each connection's body throughput
    --drop-after BYTES       AUTOGLM_MIRROR_DROP_AFTER      close the connection after this many body bytes
    --drop-times K           AUTOGLM_MIRROR_DROP_TIMES      ... only for the first K responses (0: always)
    --fail-first K           AUTOGLM_MIRROR_FAIL_FIRST      answer the first K requests with --fail-status
    --fail-status N          AUTOGLM_MIRROR_FAIL_STATUS     500, 503 or 429 (default 503)
    --retry-after S          AUTOGLM_MIRROR_RETRY_AFTER     Retry-After sent with 429/503 (default 1)
    --corrupt-path GLOB      AUTOGLM_MIRROR_CORRUPT_PATH    flip the first body byte of matching files
    --corrupt-times K        AUTOGLM_MIRROR_CORRUPT_TIMES   ... only for the first K responses (0: always)
    --first-byte-delay S     AUTOGLM_MIRROR_FIRST_BYTE_DELAY  wait S seconds before answering
    --ignore-range           AUTOGLM_MIRROR_IGNORE_RANGE=1  answer Range requests with 200 and the full body
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import threading
from dataclasses import dataclass, field

FAIL_STATUSES = (429, 500, 502, 503, 504)


@dataclass
class Faults:
    rate_limit: int = 0
    drop_after: int = -1
    drop_times: int = 0
    fail_first: int = 0
    fail_status: int = 503
    retry_after: int = 1
    fail_scope: str = "files"
    corrupt_path: str = ""
    corrupt_times: int = 0
    first_byte_delay: float = 0.0
    ignore_range: bool = False
    fault_path: str = "*"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counts: dict = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.rate_limit or self.drop_after >= 0 or self.fail_first or self.corrupt_path
                    or self.first_byte_delay or self.ignore_range)

    def describe(self) -> str:
        parts = []
        for name in ("rate_limit", "drop_after", "drop_times", "fail_first", "fail_status", "retry_after", "fail_scope",
                     "corrupt_path", "corrupt_times", "first_byte_delay", "ignore_range", "fault_path"):
            parts.append("%s=%s" % (name, getattr(self, name)))
        return " ".join(parts)

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.fault_path)

    def _take(self, name: str, limit: int) -> bool:
        """True for the first `limit` calls under this name (every call when limit is 0)."""
        with self._lock:
            seen = self._counts.get(name, 0)
            self._counts[name] = seen + 1
        return limit == 0 or seen < limit

    def should_fail(self, is_file: bool, path: str) -> bool:
        if not self.fail_first:
            return False
        if is_file and not self.matches(path):
            return False
        if not is_file and self.fail_scope != "all":
            return False
        return self._take("fail", self.fail_first)

    def drop_limit(self, path: str) -> int:
        """Body bytes to send before dropping the connection; -1 for no drop."""
        if self.drop_after < 0 or not self.matches(path):
            return -1
        return self.drop_after if self._take("drop", self.drop_times) else -1

    def corrupt(self, path: str) -> bool:
        if not self.corrupt_path or not fnmatch.fnmatchcase(path, self.corrupt_path):
            return False
        return self._take("corrupt", self.corrupt_times)


# name: (environment variable suffix, type); read only with --faults-from-env, so an environment file that
# gains a line cannot switch faults on in a production mirror.
ENV_CONTROLS = {
    "rate_limit": ("RATE_LIMIT", int), "drop_after": ("DROP_AFTER", int), "drop_times": ("DROP_TIMES", int),
    "fail_first": ("FAIL_FIRST", int), "fail_status": ("FAIL_STATUS", int), "retry_after": ("RETRY_AFTER", int),
    "fail_scope": ("FAIL_SCOPE", str), "corrupt_path": ("CORRUPT_PATH", str), "corrupt_times": ("CORRUPT_TIMES", int),
    "first_byte_delay": ("FIRST_BYTE_DELAY", float), "ignore_range": ("IGNORE_RANGE", lambda v: v in ("1", "true", "yes")),
    "fault_path": ("FAULT_PATH", str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fault and shaping controls (tests and benchmarks only; off by default)")
    group.add_argument("--faults-from-env", action="store_true",
                       help="also read the controls from $AUTOGLM_MIRROR_<NAME> (ignored without this flag)")
    group.add_argument("--rate-limit", type=int, default=0, metavar="BYTES_PER_S")
    group.add_argument("--drop-after", type=int, default=-1, metavar="BYTES")
    group.add_argument("--drop-times", type=int, default=0, metavar="K")
    group.add_argument("--fail-first", type=int, default=0, metavar="K")
    group.add_argument("--fail-status", type=int, choices=FAIL_STATUSES, default=503)
    group.add_argument("--retry-after", type=int, default=1, metavar="SECONDS")
    group.add_argument("--fail-scope", choices=("files", "all"), default="files")
    group.add_argument("--corrupt-path", default="", metavar="GLOB")
    group.add_argument("--corrupt-times", type=int, default=0, metavar="K")
    group.add_argument("--first-byte-delay", type=float, default=0.0, metavar="SECONDS")
    group.add_argument("--ignore-range", action="store_true")
    group.add_argument("--fault-path", default="*", metavar="GLOB",
                       help="repo file paths (e.g. '*.safetensors') the download faults apply to")


def from_args(args: argparse.Namespace) -> Faults:
    values = {name: getattr(args, name) for name in ENV_CONTROLS}
    if args.faults_from_env:
        for name, (suffix, convert) in ENV_CONTROLS.items():
            raw = os.environ.get("AUTOGLM_MIRROR_" + suffix)
            if raw is not None:
                values[name] = convert(raw)
        if values["fail_status"] not in FAIL_STATUSES:
            raise ValueError("AUTOGLM_MIRROR_FAIL_STATUS must be one of %s" % (FAIL_STATUSES,))
    return Faults(**values)
