"""One partition this host serves: its session and user actors, and the micro service that feeds them."""

from __future__ import annotations

import asyncio
from typing import Callable

from contracts.subjects import partition_of

from ..deps import Deps
from ..endpoints import Endpoints, partition_routes
from ..runtime.directory import Directory
from ..sessions.actor import SessionActor
from ..sessions.users import UserActor


class Partition:
    """The actors of one partition's users; `start` subscribes its endpoints, `stop` drains and leaves."""

    def __init__(self, number: int, deps: Deps, epoch: int | None = None, queue_group: str | None = None,
                 owned: Callable[[], bool] | None = None) -> None:
        self.number = number
        self.epoch = epoch  # the lease epoch its writes are fenced with; None when nobody else can own it
        self.sessions = Directory(lambda key: SessionActor(key, deps), f"sessions.p{number}")
        self.users = Directory(lambda key: UserActor(key, deps), f"users.p{number}")
        self.endpoints = Endpoints(deps.nc, partition_routes(number, self.sessions, self.users),
                                   f"AI chat sessions per (user, document): partition {number}", queue_group,
                                   owned)

    async def start(self, flush: bool = True) -> None:
        await self.endpoints.start(flush)

    async def stop(self, timeout: float = 10.0) -> None:
        """New requests get 503 while queued ones finish (up to timeout); then the service leaves."""
        try:
            await asyncio.gather(self.sessions.close(timeout), self.users.close(timeout))
        finally:
            await self.endpoints.stop()


class Ownership:
    """The partitions this host serves now, by number; subclasses decide which."""

    def __init__(self, deps: Deps, queue_group: str | None = None) -> None:
        self.deps = deps
        self.queue_group = queue_group
        self.partitions: dict[int, Partition] = {}

    def of_user(self, uid: str) -> Partition | None:
        """The running partition holding this user's actors, if this host serves it."""
        return self.partitions.get(partition_of(uid))

    def owned(self, number: int) -> Callable[[], bool] | None:
        """How a partition's service asks whether it still owns the partition (None: always)."""
        return None

    async def serve(self, number: int, deps: Deps, epoch: int | None = None, flush: bool = True) -> None:
        partition = Partition(number, deps, epoch, self.queue_group, self.owned(number))
        try:
            await partition.start(flush)
        except BaseException:
            await partition.stop(0)  # no half-subscribed service left behind
            raise
        self.partitions[number] = partition

    async def leave(self, number: int, timeout: float = 10.0) -> None:
        partition = self.partitions.pop(number, None)
        if partition is not None:
            await partition.stop(timeout)

    async def leave_all(self, timeout: float = 10.0) -> None:
        numbers = list(self.partitions)
        await asyncio.gather(*(self.leave(n, timeout) for n in numbers))
