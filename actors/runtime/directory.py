"""Where actors live: key → running actor, activated on demand and let go when idle.

All ownership of sessions goes through here, so partitioning across hosts later changes one place.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog

from contracts.errors import Unavailable

from .actor import Actor
from .mailbox import Envelope
from .tasks import cancel_and_wait

log = structlog.get_logger("directory")


class Directory:
    """Live actors by key; `async with` owns their tasks and closes them in order on exit."""

    def __init__(self, factory: Callable[[str], Actor], name: str) -> None:
        self.factory = factory
        self.name = name
        self.live: dict[str, Actor] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.activations = 0

    def deliver(self, key: str, envelope: Envelope) -> None:
        """Put the envelope in the key's actor mailbox, activating the actor if needed; raises Unavailable."""
        actor = self.live.get(key)
        if actor is None:
            if self.closing:
                raise Unavailable("shutting down, retry")
            actor = self.activate(key)
        actor.mailbox.put(envelope)

    def activate(self, key: str) -> Actor:
        actor = self.factory(key)
        self.live[key] = actor
        self.activations += 1
        task = asyncio.create_task(actor.run(self.forget), name=f"{self.name}:{key}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return actor

    def forget(self, actor: Actor) -> None:
        """Called by an actor as it stops; a newer actor under the same key is kept."""
        if self.live.get(actor.key) is actor:
            del self.live[actor.key]

    async def __aenter__(self) -> "Directory":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, let every actor finish its queue, then cancel what is left after timeout."""
        self.closing = True
        for actor in list(self.live.values()):
            actor.mailbox.close()
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            if pending:
                log.warning("actors_cancelled", directory=self.name, count=len(pending))
                await cancel_and_wait(pending)
