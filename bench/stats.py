"""Latency samples, error counts and the report dict the load tools print and write as JSON."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0.0 when empty."""
    if not sorted_samples:
        return 0.0
    rank = max(1, -(-len(sorted_samples) * q // 100))  # ceil without floats drifting
    return sorted_samples[min(len(sorted_samples), int(rank)) - 1]


def summarize(samples: list[float], elapsed: float | None = None) -> dict[str, Any]:
    """count, (rps,) p50/p90/p99/max/mean in ms of latency samples given in seconds."""
    s = sorted(samples)
    out: dict[str, Any] = {"count": len(s)}
    if elapsed:
        out["rps"] = round(len(s) / elapsed, 1)
    if not s:
        return out
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(percentile(s, q) * 1000, 3)
    out["max_ms"] = round(s[-1] * 1000, 3)
    out["mean_ms"] = round(sum(s) / len(s) * 1000, 3)
    return out


class Stats:
    """Everything one measured phase records: per-endpoint latencies, errors, event and reply timings."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.reply_bytes: Counter[str] = Counter()
        self.errors: dict[str, Counter[str]] = defaultdict(Counter)
        self.events: list[float] = []
        self.first_delta: list[float] = []
        self.complete: list[float] = []
        self.started = time.perf_counter()
        self.ended: float | None = None
        self._mark: dict[str, int] = {}
        self._mark_events = 0
        self._mark_time = self.started

    def ok(self, endpoint: str, seconds: float, nbytes: int) -> None:
        """One answered request."""
        self.latency[endpoint].append(seconds)
        self.reply_bytes[endpoint] += nbytes

    def error(self, endpoint: str, code: str) -> None:
        """One failed request (a docchat error code, "timeout", "no_responders", ...)."""
        self.errors[endpoint][code] += 1

    def stop(self) -> None:
        """Fix the end of the measured window."""
        if self.ended is None:
            self.ended = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def mean_reply_bytes(self) -> dict[str, int]:
        """Mean reply body size per endpoint (sizes the echo floor's replies)."""
        return {k: int(self.reply_bytes[k] / len(v)) for k, v in self.latency.items() if v}

    def progress(self) -> str:
        """One line of what happened since the previous call: req/s and p99 per endpoint, errors."""
        now = time.perf_counter()
        window = max(now - self._mark_time, 1e-9)
        parts = [f"t={now - self.started:5.1f}s"]
        for name, samples in sorted(self.latency.items()):
            start = self._mark.get(name, 0)
            recent = sorted(samples[start:])
            self._mark[name] = len(samples)
            parts.append(f"{name} {len(recent) / window:7.0f}/s p99 {percentile(recent, 99) * 1000:6.1f}ms")
        recent_ev = sorted(self.events[self._mark_events:])
        self._mark_events = len(self.events)
        if recent_ev:
            parts.append(f"event p99 {percentile(recent_ev, 99) * 1000:.1f}ms")
        errors = sum(sum(c.values()) for c in self.errors.values())
        parts.append(f"errors {errors}")
        self._mark_time = now
        return " | ".join(parts)

    def report(self) -> dict[str, Any]:
        """The phase as a JSON-ready dict (latencies in ms)."""
        elapsed = self.elapsed
        endpoints = {}
        for name, samples in sorted(self.latency.items()):
            endpoints[name] = summarize(samples, elapsed) | {"mean_reply_bytes": self.mean_reply_bytes()[name]}
        for name in self.errors:
            endpoints.setdefault(name, {"count": 0})
        replies: dict[str, Any] = {
            "first_delta": summarize(self.first_delta) if self.first_delta else "n/a",
            "complete": summarize(self.complete) if self.complete else "n/a",
        }
        return {
            "elapsed_s": round(elapsed, 3),
            "endpoints": endpoints,
            "errors": {name: dict(c) for name, c in self.errors.items() if c},
            "event_delivery": summarize(self.events) if self.events else "n/a",
            "replies": replies,
        }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either is missing or b is zero."""
    if not a or not b:
        return None
    return round(a / b, 3)


def compare(docchat: dict[str, Any], echo: dict[str, Any]) -> dict[str, Any]:
    """Per endpoint: docchat's req/s and p99 as ratios to the echo floor's."""
    out: dict[str, Any] = {}
    for name, d in docchat["endpoints"].items():
        e = echo["endpoints"].get(name)
        if not e:
            continue
        out[name] = {"rps_ratio": ratio(d.get("rps"), e.get("rps")),
                     "p99_ratio": ratio(d.get("p99_ms"), e.get("p99_ms")),
                     "p50_ratio": ratio(d.get("p50_ms"), e.get("p50_ms"))}
    return out


def format_report(title: str, rep: dict[str, Any]) -> str:
    """A human-readable table of one phase's report."""
    lines = [f"== {title} ({rep['elapsed_s']:.1f}s)"]
    lines.append(f"  {'endpoint':<12}{'count':>9}{'req/s':>10}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  ms")
    for name, e in rep["endpoints"].items():
        if "p50_ms" not in e:
            lines.append(f"  {name:<12}{e['count']:>9}")
            continue
        lines.append(f"  {name:<12}{e['count']:>9}{e.get('rps', 0):>10.0f}{e['p50_ms']:>9.2f}{e['p90_ms']:>9.2f}"
                     f"{e['p99_ms']:>9.2f}{e['max_ms']:>9.2f}")
    for label, key in (("event", "event_delivery"),):
        ev = rep.get(key)
        if isinstance(ev, dict):
            lines.append(f"  {label:<12}{ev['count']:>9}{'':>10}{ev['p50_ms']:>9.2f}{ev['p90_ms']:>9.2f}"
                         f"{ev['p99_ms']:>9.2f}{ev['max_ms']:>9.2f}  (send → message event)")
    for label, ev in rep.get("replies", {}).items():
        if isinstance(ev, dict):
            lines.append(f"  {label:<12}{ev['count']:>9}{'':>10}{ev['p50_ms']:>9.2f}{ev['p90_ms']:>9.2f}"
                         f"{ev['p99_ms']:>9.2f}{ev['max_ms']:>9.2f}  (send → reply)")
        elif "replies" in rep and rep.get("event_delivery") != "n/a":
            lines.append(f"  {label:<12}      n/a")
    behind, sends = rep.get("replies_unfinished"), rep["endpoints"].get("send", {}).get("count")
    if behind is not None and sends:
        hint = " (the assistant is behind or not running)" if behind > sends / 10 else ""
        lines.append(f"  replies not ended when the run ended: {behind} of {sends} sends{hint}")
    if rep.get("events_missing"):
        lines.append(f"  events missing: {rep['events_missing']}")
    lines.append(f"  errors: {rep['errors'] or 'none'}")
    if rep.get("cpu_cores"):
        lines.append(f"  cpu cores used: {rep['cpu_cores']}")
    return "\n".join(lines)


def format_compare(cmp: dict[str, Any]) -> str:
    """One line per endpoint: docchat / echo floor ratios."""
    return "\n".join(f"  {name:<12} req/s ratio {c['rps_ratio']}   p50 ratio {c['p50_ratio']}   "
                     f"p99 ratio {c['p99_ratio']}" for name, c in cmp.items())
