"""Partitions held by leases in the shared store, spread evenly over the live hosts.

Every `renew_seconds` a host says it is alive, renews the leases it holds, lets go of partitions
beyond its fair share (ceil(PARTITIONS / live hosts)) and takes free or expired ones up to it.
Taking a lease bumps its epoch; every write of a partition's actors checks that epoch in its own
transaction (FencedStore), so a host that lost a lease, even one frozen and woken, writes nothing.
A host also stops serving a partition once its lease may have expired by its own clock.

Each host's partition services use a queue group of their own. A frozen former owner keeps its
subscriptions until the server drops its connection; with one shared group, the server would go on
sending it a share of the partition's requests. With one group per host, the live owner gets every
request and answers it, and what the frozen host answers when it wakes goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import socket
import time
import uuid
from typing import Awaitable, Callable

import structlog

from contracts.barrier import flushed
from contracts.subjects import PARTITIONS

from ..deps import Deps
from ..runtime.tasks import cancel_and_wait
from ..settings import Settings
from ..store import LeaseStore
from .partition import Ownership, Partition

log = structlog.get_logger("ownership")
MARGIN = 0.5  # seconds of a lease we never use, for clock drift between this host and the database


class LeasedOwnership(Ownership):
    """Holds partition leases while entered; exit hands every partition over and says goodbye."""

    def __init__(self, deps: Deps, leases: LeaseStore, settings: Settings) -> None:
        super().__init__(deps, queue_group=f"q{uuid.uuid4().hex}")
        self.leases = leases
        self.host = settings.host_id or f"{socket.gethostname()}-{os.getpid()}"
        self.ttl_ms = int(settings.lease_seconds * 1000)
        self.every = settings.lease_renew_seconds
        self.valid_until: dict[int, float] = {}  # monotonic time after which we stop serving a partition
        self.task: asyncio.Task[None] | None = None
        self.handovers: set[asyncio.Task[None]] = set()
        self.live_hosts = 0

    async def __aenter__(self) -> "LeasedOwnership":
        await self.tick()
        self.task = asyncio.create_task(self.run(), name="leases")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            await cancel_and_wait([self.task])
        await asyncio.gather(*self.handovers, return_exceptions=True)
        held = {n: p.epoch for n, p in self.partitions.items()}
        await self.leave_all()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                for number, epoch in held.items():
                    await self.leases.release(self.host, number, epoch or 0)
                await self.leases.goodbye(self.host)
        log.info("partitions_released", host=self.host, count=len(held))

    async def run(self) -> None:
        """Tick until cancelled; a tick that fails is logged, and partitions whose lease ran out stop."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the store may be down: try again next tick
                log.warning("lease_tick_failed", host=self.host, error=repr(exc))
            await self.expire()

    def asking(self) -> asyncio.Timeout:
        """A bound on one call to the lease store: a hung database must not hold back `expire`."""
        return asyncio.timeout(self.ttl_ms / 2000)

    async def tick(self) -> None:
        """Heartbeat, renew, then move toward this host's fair share of partitions."""
        until = time.monotonic() + self.ttl_ms / 1000 - MARGIN  # counted from before the renewal
        held = {n: p.epoch or 0 for n, p in self.partitions.items()}
        async with self.asking():
            self.live_hosts = max(1, await self.leases.heartbeat(self.host, self.ttl_ms))
            kept = await self.leases.renew(self.host, held, self.ttl_ms) if held else set()
        lost = [number for number in held if number not in kept]
        for number in kept:
            self.valid_until[number] = until
        for number in lost:
            log.warning("partition_lost", host=self.host, partition=number)
        await self.each(lambda number: self.drop(number, timeout=1.0), lost)
        share = math.ceil(PARTITIONS / self.live_hosts)
        extra = len(self.partitions) - share
        if extra > 0:
            # In the background: renewals go on while they drain (one after another, 32 drains took 2 s
            # under load, and the partitions this host keeps ran out meanwhile).
            for number in sorted(self.partitions, reverse=True)[:extra]:
                self.start_handover(number)
        elif extra < 0:
            async with self.asking():
                won = await self.leases.acquire(self.host, -extra, self.ttl_ms)
            for number, epoch in won.items():
                self.valid_until[number] = until
                await self.serve(number, dataclasses.replace(self.deps, store=self.leases.fenced(number, epoch)),
                                 epoch, flush=False)
            if won:
                await flushed(self.deps.nc)
                log.info("partitions_taken", host=self.host, partitions=sorted(won), held=len(self.partitions),
                         live_hosts=self.live_hosts)

    def owned(self, number: int) -> Callable[[], bool]:
        """False once, by this host's clock, the lease may have run out: a host that wakes from a
        freeze leaves requests to the new owner before its next tick drops the partition."""
        return lambda: time.monotonic() < self.valid_until.get(number, 0.0)

    def start_handover(self, number: int) -> None:
        """Stop counting the partition as ours now; drain it and free its lease in a task. Until the
        lease is freed (or may have run out) its service answers new requests 503."""
        partition = self.partitions.pop(number)
        task = asyncio.create_task(self.hand_over(partition), name=f"handover:{number}")
        self.handovers.add(task)
        task.add_done_callback(self.handovers.discard)

    async def hand_over(self, partition: Partition) -> None:
        """Drain the partition's actors, stop its service, then free the lease for another host."""
        try:
            await partition.stop()
            async with self.asking():
                await self.leases.release(self.host, partition.number, partition.epoch or 0)
        except Exception as exc:  # noqa: BLE001 - the lease then runs out by itself
            log.warning("handover_failed", host=self.host, partition=partition.number, error=repr(exc))
            return
        finally:
            if partition.number not in self.partitions:  # not taken again meanwhile
                self.valid_until.pop(partition.number, None)
        log.info("partition_handed_over", host=self.host, partition=partition.number, live_hosts=self.live_hosts)

    async def drop(self, number: int, timeout: float = 10.0) -> None:
        self.valid_until.pop(number, None)
        await self.leave(number, timeout)

    async def expire(self) -> None:
        """Stop serving every partition whose lease may have run out while we could not renew it."""
        now = time.monotonic()
        expired = [number for number, until in self.valid_until.items() if now > until]
        for number in expired:
            log.warning("partition_expired", host=self.host, partition=number)
        await self.each(lambda number: self.drop(number, timeout=1.0), expired)

    async def each(self, step: Callable[[int], Awaitable[None]], numbers: list[int]) -> None:
        """Run step for every partition concurrently; a step that fails is logged, the others finish."""
        results = await asyncio.gather(*(step(n) for n in numbers), return_exceptions=True)
        for number, result in zip(numbers, results):
            if isinstance(result, Exception):
                log.warning("partition_step_failed", host=self.host, partition=number, error=repr(result))
            elif isinstance(result, BaseException):
                raise result
