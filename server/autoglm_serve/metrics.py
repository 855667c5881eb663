"""Prometheus text-format metrics for the built-in server, with no client library (the venv holds torch only)."""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Tuple

LabelKey = Tuple[Tuple[str, str], ...]

# Latency buckets in seconds: from a cached tiny-model reply to a long generation on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _labels(key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = list(key) + list(extra)
    if not pairs:
        return ""
    body = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in pairs)
    return "{%s}" % body


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Registry:
    """Counters, gauges and histograms keyed by label tuples; render() gives the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[LabelKey, float]] = {}
        self._hist: dict[str, dict[LabelKey, list[float]]] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._callbacks: list[Callable[[], Iterable[tuple[str, dict[str, str], float]]]] = []

    def declare(self, name: str, kind: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._meta[name] = (kind, help_text)
        if kind == "histogram":
            self._hist[name] = {}
            self._buckets[name] = buckets
        else:
            self._values[name] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._buckets[name]
        with self._lock:
            # Per series: one count per bucket, then sum and count.
            series = self._hist[name].setdefault(key, [0.0] * (len(buckets) + 2))
            for i, bound in enumerate(buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def add_callback(self, callback: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        """A callback yields (gauge name, labels, value) at scrape time, e.g. GPU memory."""
        self._callbacks.append(callback)

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        sampled: dict[str, dict[LabelKey, float]] = {}
        for callback in self._callbacks:
            for name, labels, value in callback():
                sampled.setdefault(name, {})[tuple(sorted(labels.items()))] = value
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._meta.items():
                lines.append("# HELP %s %s" % (name, help_text))
                lines.append("# TYPE %s %s" % (name, kind))
                if kind == "histogram":
                    buckets = self._buckets[name]
                    for key, series in sorted(self._hist[name].items()):
                        for i, bound in enumerate(buckets):
                            lines.append("%s_bucket%s %s" % (name, _labels(key, [("le", _number(bound))]), _number(series[i])))
                        lines.append("%s_bucket%s %s" % (name, _labels(key, [("le", "+Inf")]), _number(series[-1])))
                        lines.append("%s_sum%s %s" % (name, _labels(key), _number(series[-2])))
                        lines.append("%s_count%s %s" % (name, _labels(key), _number(series[-1])))
                else:
                    series = dict(self._values[name])
                    series.update(sampled.get(name, {}))
                    for key, value in sorted(series.items()):
                        lines.append("%s%s %s" % (name, _labels(key), _number(value)))
        return "\n".join(lines) + "\n"
