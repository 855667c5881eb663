"""Send chat completions through the gateway from a few clients until a stop file appears, then a summary.

    gateway_load.py SUMMARY STOPFILE URL KEY [CLIENTS]
SUMMARY gets {"sent", "failed", "longest_s", "errors": [first ten], "replicas": {...}} once every client ended.
Used by side_effect.yml: a full roll of the fleet behind the gateway must fail none of these requests.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

# Longer than the roll under this load can take; the stop file ends it sooner.
LIMIT_S = 2700
# One client at most one request a second: the roll is what is measured, not the three CPU engines under load
# (with two clients at 0.5 s the CI run took 3155 s, against 1833 s before the gateway).
PAUSE_S = 1.0


def call(url: str, key: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as resp:
        return json.load(resp)


def main() -> int:
    summary, stop, base, key = sys.argv[1:5]
    clients = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    model = call(base + "/v1/models", key)["data"][0]["id"]
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Reply with one word."}]}
    lock = threading.Lock()
    stats = {"sent": 0, "failed": 0, "longest_s": 0.0, "errors": []}
    started = time.monotonic()

    def client() -> None:
        while not os.path.exists(stop) and time.monotonic() - started < LIMIT_S:
            t0 = time.monotonic()
            error = None
            try:
                answer = call(base + "/v1/chat/completions", key, body)
                if not answer.get("choices"):
                    error = "no choices: %s" % json.dumps(answer)[:200]
            except urllib.error.HTTPError as exc:
                error = "HTTP %d: %s" % (exc.code, exc.read()[:200].decode("utf-8", "replace"))
            except (OSError, ValueError) as exc:
                error = "%s: %s" % (type(exc).__name__, exc)
            elapsed = time.monotonic() - t0
            with lock:
                stats["sent"] += 1
                stats["longest_s"] = round(max(stats["longest_s"], elapsed), 2)
                if error:
                    stats["failed"] += 1
                    if len(stats["errors"]) < 10:
                        stats["errors"].append("t=%.1f %s" % (time.monotonic() - started, error))
            time.sleep(PAUSE_S)

    threads = [threading.Thread(target=client) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats["seconds"] = round(time.monotonic() - started, 1)
    with open(summary, "w") as fh:
        json.dump(stats, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
