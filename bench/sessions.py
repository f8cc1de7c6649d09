"""The idle-sessions scenario: create N sessions, let them passivate, read the service's RSS, wake some.

Waking is measured as the latency of the first `messages` request to a passivated session (its actor
is activated from storage), then of a second request to the same, now live, session for comparison.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from contracts.client import AdminClient, DocchatClient
from contracts.errors import DocchatError

from .spawn import rss_kib
from .stats import summarize


@dataclass
class SessionsConfig:
    """What the scenario does; `idle_wait` should exceed the service's DOCCHAT_IDLE_SECONDS."""

    sessions: int = 100_000
    per_user: int = 10
    concurrency: int = 128
    idle_wait: float = 70.0
    sample: int = 1000
    timeout: float = 10.0
    progress: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


async def create(nc: Client, cfg: SessionsConfig, pid: int | None) -> tuple[list[tuple[DocchatClient, str]], dict]:
    """Grant and getOrCreate cfg.sessions sessions with cfg.concurrency workers; (sessions, figures)."""
    admin = AdminClient(nc, cfg.timeout)
    made: list[tuple[DocchatClient, str]] = []
    errors: dict[str, int] = {}
    latencies: list[float] = []
    next_index = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < cfg.sessions:
            i, next_index = next_index, next_index + 1
            sub, doc = f"idle-{cfg.run_id}-u{i // cfg.per_user}", f"doc-{cfg.run_id}-{i}"
            try:
                await admin.grant(doc, sub)
                client = DocchatClient(nc, sub, cfg.timeout)
                t0 = time.perf_counter()
                reply = await client.get_or_create(doc)
                latencies.append(time.perf_counter() - t0)
                made.append((client, reply.session.id))
            except DocchatError as exc:
                errors[str(exc.code)] = errors.get(str(exc.code), 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted, the scenario goes on
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            rate = len(made) / (time.perf_counter() - start)
            log(f"created {len(made)}/{cfg.sessions} ({rate:.0f}/s) errors {sum(errors.values())} "
                f"service RSS {mib(rss_kib(pid))} MiB")

    tick = asyncio.create_task(ticker()) if cfg.progress else None
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, cfg.concurrency))))
    finally:
        if tick:
            tick.cancel()
    elapsed = time.perf_counter() - start
    return made, {"created": len(made), "elapsed_s": round(elapsed, 2), "rate": round(len(made) / elapsed, 1),
                  "getOrCreate": summarize(latencies), "errors": errors}


async def first_requests(sample: list[tuple[DocchatClient, str]]) -> tuple[list[float], dict[str, int]]:
    """One `messages` request per session, one at a time; (latencies, errors)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for client, sid in sample:
        t0 = time.perf_counter()
        try:
            await client.messages(sid, limit=10)
            latencies.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted
            code = str(exc.code) if isinstance(exc, DocchatError) else type(exc).__name__
            errors[code] = errors.get(code, 0) + 1
    return latencies, errors


async def run_sessions(nc: Client, cfg: SessionsConfig, pid: int | None = None) -> dict[str, Any]:
    """The whole scenario; a JSON-ready report (RSS in MiB, latencies in ms)."""
    report: dict[str, Any] = {"config": {k: v for k, v in vars(cfg).items()}, "service_pid": pid,
                              "rss_mib": {"before": mib(rss_kib(pid))}}
    made, report["create"] = await create(nc, cfg, pid)
    report["rss_mib"]["after_create"] = mib(rss_kib(pid))
    log(f"created {len(made)} sessions; waiting {cfg.idle_wait:.0f}s for them to passivate")
    deadline = time.perf_counter() + cfg.idle_wait
    while (left := deadline - time.perf_counter()) > 0:
        await asyncio.sleep(min(5.0, left))
        if cfg.progress:
            waited = cfg.idle_wait - max(0.0, deadline - time.perf_counter())
            log(f"idle {waited:.0f}s service RSS {mib(rss_kib(pid))} MiB")
    report["rss_mib"]["idle"] = mib(rss_kib(pid))
    sample = random.sample(made, min(cfg.sample, len(made)))
    cold, cold_errors = await first_requests(sample)
    warm, warm_errors = await first_requests(sample)
    report["reactivate_first_request"] = summarize(cold) | {"errors": cold_errors}
    report["live_request"] = summarize(warm) | {"errors": warm_errors}
    report["rss_mib"]["after_reactivate"] = mib(rss_kib(pid))
    return report


def format_sessions(rep: dict[str, Any]) -> str:
    """The scenario's report for people."""
    c, cold, warm = rep["create"], rep["reactivate_first_request"], rep["live_request"]
    rss = rep["rss_mib"]
    lines = [
        f"== idle sessions (service pid {rep['service_pid'] or 'unknown'})",
        f"  created {c['created']} in {c['elapsed_s']}s ({c['rate']}/s), getOrCreate p50 "
        f"{c['getOrCreate'].get('p50_ms')} p99 {c['getOrCreate'].get('p99_ms')} ms, errors {c['errors'] or 'none'}",
        f"  service RSS MiB: before {rss['before']}  after create {rss['after_create']}  idle {rss['idle']}  "
        f"after reactivation {rss['after_reactivate']}",
        f"  first request to a passivated session: p50 {cold.get('p50_ms')} p99 {cold.get('p99_ms')} "
        f"max {cold.get('max_ms')} ms ({cold['count']} sessions, errors {cold['errors'] or 'none'})",
        f"  second request (live session):         p50 {warm.get('p50_ms')} p99 {warm.get('p99_ms')} "
        f"max {warm.get('max_ms')} ms",
    ]
    return "\n".join(lines)
