"""Poll /health of every replica until a stop file appears (or a time limit), one JSON line per round.

    poll_health.py OUT STOPFILE "NODE ADDRESS PORT..."...     each line: {"t": seconds, "up": [true, false, ...]}
A node is up when every one of its replicas answers 200. Used by side_effect.yml to show that a rolling restart
never takes more than one node down.
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

LIMIT_S = 2700


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> int:
    out, stop = sys.argv[1], sys.argv[2]
    nodes = [["http://%s:%s/health" % (words[1], port) for port in words[2:]] for words in map(str.split, sys.argv[3:])]
    if not nodes or not all(nodes):
        sys.exit("poll_health.py: give each node as \"NODE ADDRESS PORT...\", got %r" % sys.argv[3:])
    start = time.monotonic()
    with open(out, "w") as fh:
        while not os.path.exists(stop) and time.monotonic() - start < LIMIT_S:
            fh.write(json.dumps({"t": round(time.monotonic() - start, 2), "up": [all(healthy(u) for u in urls) for urls in nodes]}) + "\n")
            fh.flush()
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
