"""Poll /health on every node until a stop file appears (or a time limit), one JSON line per round.

    poll_health.py OUT STOPFILE URL...     each line: {"t": seconds, "up": [true, false, ...]}
Used by side_effect.yml to show that a rolling restart never takes more than one node down.
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
    out, stop, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
    start = time.monotonic()
    with open(out, "w") as fh:
        while not os.path.exists(stop) and time.monotonic() - start < LIMIT_S:
            fh.write(json.dumps({"t": round(time.monotonic() - start, 2), "up": [healthy(u) for u in urls]}) + "\n")
            fh.flush()
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
