"""The highest open-loop send rate a service keeps up with, found by short probe runs.

The issue's event-delivery figure is taken at half of that rate. A probe keeps up when it had no
errors, reached its rate, kept send p99 bounded and, with an assistant, left few replies unended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

P99_LIMIT_MS = 100.0  # a send p99 above this means requests are queueing up, not being served
BACKLOG_SHARE = 0.1  # more unended replies than this share of the sends: the assistant is behind
RATE_SHARE = 0.95  # a probe must reach this share of its target rate


def keeps_up(rep: dict[str, Any], rate: float, replies: bool) -> tuple[bool, str]:
    """Whether one open-loop run at `rate` kept up, and a few words on why (not)."""
    send = rep["endpoints"].get("send", {})
    if rep["errors"]:
        return False, f"errors {rep['errors']}"
    reached = send.get("rps", 0.0)
    if reached < RATE_SHARE * rate:
        return False, f"reached {reached:.0f}/s"
    p99 = send.get("p99_ms", float("inf"))
    if p99 > P99_LIMIT_MS:
        return False, f"send p99 {p99:.0f} ms"
    behind, sends = rep.get("replies_unfinished"), send.get("count", 0)
    if replies and behind is not None and behind > BACKLOG_SHARE * sends:
        return False, f"{behind} of {sends} replies not ended"
    unended = f", {behind} of {sends} replies not ended" if replies and behind is not None else ""
    return True, f"send p99 {p99:.1f} ms{unended}"


@dataclass
class Search:
    """Probe rates upward by `factor` until one fails, then halve the gap until it is under `precision`
    of the failing rate (or `max_probes` ran). `best` is the highest rate that kept up (0: none did).

    A rate that falls behind is probed `retries` more times and fails only if every try did: on a
    shared machine one stall in a 5 s probe would otherwise halve the figure taken from it."""

    start: float = 200.0
    factor: float = 1.5
    precision: float = 0.1
    max_probes: int = 16
    retries: int = 1
    probes: list[dict[str, Any]] = field(default_factory=list)

    def kept_up(self) -> dict[float, bool]:
        """Each probed rate: whether any of its tries kept up."""
        seen: dict[float, bool] = {}
        for p in self.probes:
            seen[p["rate"]] = seen.get(p["rate"], False) or p["ok"]
        return seen

    @property
    def best(self) -> float:
        return max((rate for rate, ok in self.kept_up().items() if ok), default=0.0)

    @property
    def worst(self) -> float | None:
        return min((rate for rate, ok in self.kept_up().items() if not ok), default=None)

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the search is done."""
        if len(self.probes) >= self.max_probes:
            return None
        best, worst = self.best, self.worst
        if worst is None:
            return round(best * self.factor) if best else self.start
        if worst - best <= self.precision * worst:
            return None
        return round((best + worst) / 2)

    async def run(self, probe: Callable[[float], Awaitable[tuple[bool, str]]]) -> float:
        """Probe until done; returns best."""
        while (rate := self.next_rate()) is not None:
            for _ in range(1 + self.retries):
                ok, why = await probe(rate)
                self.probes.append({"rate": rate, "ok": ok, "why": why})
                if ok or len(self.probes) >= self.max_probes:
                    break
        return self.best
