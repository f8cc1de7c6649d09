"""The load generator: users × sessions, a send/messages mix, closed-loop at C or open-loop at a rate.

Against docchat it grants each (user, document) through AdminClient, calls getOrCreate once per
session and follows each session's events; against the echo floor (`prefix="bench.echo"`) it sends
the same bodies to the same subject shapes and skips setup and events.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from contracts import requests as rq
from contracts.client import AdminClient, DocchatClient
from contracts.codec import encode
from contracts.subjects import PREFIX, user_token

from .stats import Stats
from .tracker import Tracker

ENDPOINTS = ("send", "messages")


@dataclass
class LoadConfig:
    """What one load run does; `rate > 0` means open-loop, `count > 0` overrides `duration`."""

    users: int = 32
    sessions_per_user: int = 4
    concurrency: int = 16
    rate: float = 0.0
    duration: float = 10.0
    count: int = 0
    warmup: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: {"send": 1.0})
    content_chars: int = 200
    document_bytes: int = 2048
    page: int = 100
    prefill: int = 0
    timeout: float = 5.0
    events: bool = True
    progress: bool = True
    max_inflight: int = 10_000
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass(frozen=True)
class Target:
    """One session as the load sees it: who, which session, and its subjects' prefix."""

    uid: str
    sid: str
    prefix: str

    def subject(self, verb: str) -> str:
        return f"{self.prefix}.{self.uid}.sessions.{self.sid}.{verb}"


class _Ids(msgspec.Struct):
    id: str


class _SendIds(msgspec.Struct):
    message: _Ids
    reply: _Ids


_send_ids = msgspec.json.Decoder(_SendIds)


def parse_mix(text: str) -> dict[str, float]:
    """`send=0.8,messages=0.2` → weights; endpoints other than send and messages are refused."""
    mix: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        name, _, weight = part.partition("=")
        if name not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {name!r} in mix (use {', '.join(ENDPOINTS)})")
        mix[name] = float(weight or 1)
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix needs a positive weight")
    return mix


def bodies(cfg: LoadConfig) -> dict[str, bytes]:
    """The request bodies, encoded once (every send carries the same content and document)."""
    doc = "<doc>" + "x" * max(0, cfg.document_bytes - 11) + "</doc>"
    return {"send": encode(rq.Send(content="y" * cfg.content_chars, document_xml=doc)),
            "messages": encode(rq.ListMessages(after_seq=0, limit=cfg.page))}


def log(line: str) -> None:
    """Progress and status lines go to stderr."""
    print(line, file=sys.stderr, flush=True)


class Load:
    """Drives one target (docchat or the echo floor) with one connection; `setup()` then `run()`."""

    def __init__(self, nc: Client, cfg: LoadConfig, prefix: str = PREFIX) -> None:
        self.nc, self.cfg, self.prefix = nc, cfg, prefix
        self.docchat = prefix == PREFIX
        self.targets: list[Target] = []
        self.tracker = Tracker()
        self.bodies = bodies(cfg)
        self.ops, self.weights = list(cfg.mix), list(cfg.mix.values())
        self.setup_stats = Stats()

    async def setup(self) -> dict[str, Any]:
        """Grant, getOrCreate and subscribe every session (docchat), or make synthetic ids (echo)."""
        cfg = self.cfg
        pairs = [(f"bench-{cfg.run_id}-u{u}", f"doc-{cfg.run_id}-{u}-{s}")
                 for u in range(cfg.users) for s in range(cfg.sessions_per_user)]
        if not self.docchat:
            self.targets = [Target(user_token(sub), f"s{i}", self.prefix) for i, (sub, _) in enumerate(pairs)]
            return {}
        admin, gate = AdminClient(self.nc, cfg.timeout), asyncio.Semaphore(max(1, cfg.concurrency))
        if cfg.events:  # subscribed before any send, as a client must
            await self.tracker.follow(self.nc, f"bench-{cfg.run_id}-u")

        async def one(sub: str, doc: str) -> None:
            async with gate:
                await admin.grant(doc, sub)
                client = DocchatClient(self.nc, sub, cfg.timeout)
                t0 = time.perf_counter()
                reply = await client.get_or_create(doc)
                self.setup_stats.ok("getOrCreate", time.perf_counter() - t0, 0)
                self.targets.append(Target(client.uid, reply.session.id, self.prefix))

        await asyncio.gather(*(one(sub, doc) for sub, doc in pairs))
        self.setup_stats.stop()
        if cfg.prefill:
            await self.prefill()
        return self.setup_stats.report()["endpoints"]

    async def prefill(self) -> None:
        """Send `prefill` messages to every session first, so `messages` pages are full."""
        stats = self.tracker.reset()
        gate = asyncio.Semaphore(max(1, self.cfg.concurrency))

        async def fill(t: Target) -> None:
            for _ in range(self.cfg.prefill):
                async with gate:
                    await self.request("send", t, time.perf_counter(), stats)

        log(f"prefill: {self.cfg.prefill} sends × {len(self.targets)} sessions")
        await asyncio.gather(*(fill(t) for t in self.targets))
        if stats.errors:
            log(f"prefill errors: {dict(stats.errors)}")

    async def request(self, op: str, target: Target, start: float, stats: Stats) -> None:
        """One request; its latency counts from `start` (the scheduled time in open-loop)."""
        try:
            msg = await self.nc.request(target.subject(op), self.bodies[op], timeout=self.cfg.timeout)
        except NatsTimeout:
            stats.error(op, "timeout")
            return
        except NoRespondersError:
            stats.error(op, "no_responders")
            return
        except Exception as exc:  # noqa: BLE001 - counted, the load goes on
            stats.error(op, type(exc).__name__)
            return
        end = time.perf_counter()
        headers = msg.headers
        if headers and "Nats-Service-Error-Code" in headers:
            stats.error(op, headers["Nats-Service-Error-Code"])
            return
        stats.ok(op, end - start, len(msg.data))
        if op == "send" and self.docchat and self.cfg.events:
            try:
                ids = _send_ids.decode(msg.data)
            except msgspec.DecodeError:
                stats.error(op, "bad_reply")
                return
            self.tracker.on_send(start, ids.message.id, ids.reply.id)

    async def run(self) -> dict[str, Any]:
        """Warm up, then one measured phase; returns its report."""
        cfg = self.cfg
        if cfg.warmup and not cfg.count:
            await self.phase(self.tracker.reset(), time.perf_counter() + cfg.warmup, 0, progress=False)
        stats = self.tracker.reset()
        deadline = float("inf") if cfg.count else time.perf_counter() + cfg.duration
        await self.phase(stats, deadline, cfg.count, progress=cfg.progress)
        stats.stop()
        behind = self.tracker.unfinished(stats)  # the reply backlog the run left behind
        if self.docchat and cfg.events:
            await self.tracker.settle(2.0)
        rep = stats.report()
        if self.docchat and cfg.events:
            rep["events_missing"] = self.tracker.missing()
            rep["replies_unfinished"] = behind
        return rep

    async def phase(self, stats: Stats, deadline: float, count: int, progress: bool) -> None:
        """Run the mix until the deadline or `count` requests, printing a progress line every second."""
        ticker = asyncio.create_task(self.ticker(stats)) if progress else None
        try:
            if self.cfg.rate > 0:
                await self.open_loop(stats, deadline, count)
            else:
                await self.closed_loop(stats, deadline, count)
        finally:
            if ticker:
                ticker.cancel()

    async def ticker(self, stats: Stats) -> None:
        while True:
            await asyncio.sleep(1.0)
            log(stats.progress())

    def pick(self) -> tuple[str, Target]:
        return random.choices(self.ops, self.weights)[0], random.choice(self.targets)

    async def closed_loop(self, stats: Stats, deadline: float, count: int) -> None:
        issued = 0

        def more() -> bool:
            nonlocal issued
            issued += 1
            return (not count or issued <= count) and time.perf_counter() < deadline

        async def worker() -> None:
            while more():
                op, target = self.pick()
                await self.request(op, target, time.perf_counter(), stats)

        await asyncio.gather(*(worker() for _ in range(max(1, self.cfg.concurrency))))

    async def open_loop(self, stats: Stats, deadline: float, count: int) -> None:
        """Start requests at `rate`/s on schedule, however slow the answers (no coordinated omission)."""
        rate, inflight = self.cfg.rate, set()
        start, issued = time.perf_counter(), 0
        while True:
            now = time.perf_counter()
            if now >= deadline or (count and issued >= count):
                break
            due = int((now - start) * rate) + 1
            if count:
                due = min(due, count)
            while issued < due:
                scheduled = start + issued / rate
                issued += 1
                op, target = self.pick()
                if len(inflight) >= self.cfg.max_inflight:
                    stats.error(op, "client_overload")
                    continue
                task = asyncio.create_task(self.request(op, target, scheduled, stats))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            await asyncio.sleep(max(0.0, start + issued / rate - time.perf_counter()))
        if inflight:
            await asyncio.wait(inflight)

    async def quiesce(self, timeout: float = 120.0) -> float:
        """Wait for the service to go quiet (no events for 1 s) so the next run starts on an idle box."""
        if self.docchat and self.cfg.events:
            return await self.tracker.quiet(1.0, timeout)
        await asyncio.sleep(0.5)
        return 0.5

    async def close(self) -> None:
        """Stop following events."""
        await self.tracker.close()


async def run_load(nc: Client, cfg: LoadConfig, prefix: str = PREFIX,
                   on_setup: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Setup plus one measured run against one target; the report of that run (setup under "setup")."""
    load = Load(nc, cfg, prefix)
    try:
        setup = await load.setup()
        if on_setup:
            on_setup(setup)
        rep = await load.run()
        rep["setup"] = setup
        return rep
    finally:
        await load.close()
