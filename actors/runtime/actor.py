"""The actor loop: one message at a time, every caller answered, the actor outlives a failing message."""

from __future__ import annotations

from typing import Any, Callable

import structlog

from contracts.errors import DocchatError, Unavailable

from .. import replies
from .mailbox import Envelope, Mailbox

log = structlog.get_logger("actor")


class Actor:
    """Base actor: subclasses implement `on_start` (load state) and `receive` (handle one message)."""

    def __init__(self, key: str, mailbox_size: int, idle_seconds: float) -> None:
        self.key = key
        self.mailbox = Mailbox(mailbox_size)
        self.idle_seconds = idle_seconds

    async def on_start(self) -> None:
        """Load state; raising here answers every queued envelope with the error."""

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply body."""
        raise NotImplementedError

    async def run(self, on_exit: Callable[["Actor"], None]) -> None:
        """Serve the mailbox until idle for `idle_seconds` or closed and empty; never raises."""
        try:
            try:
                await self.on_start()
            except Exception as exc:  # noqa: BLE001 - answered to every waiting caller
                on_exit(self)
                self.mailbox.close()
                for envelope in self.mailbox.take_all():
                    await self.answer(envelope, exc)
                return
            while True:
                envelope = await self.mailbox.get(self.idle_seconds)
                if envelope is None:
                    if self.mailbox.empty():
                        on_exit(self)  # no await between the check and leaving: nothing is lost
                        return
                    continue
                try:
                    result: Any = await self.receive(envelope.message)
                except Exception as exc:  # noqa: BLE001 - the caller hears of it, the actor lives
                    result = exc
                await self.answer(envelope, result)
        finally:
            on_exit(self)
            for envelope in self.mailbox.take_all():
                await self.answer(envelope, Unavailable("shutting down, retry"))

    async def answer(self, envelope: Envelope, result: Any) -> None:
        if envelope.request is None:
            return
        if isinstance(result, BaseException):
            if not isinstance(result, DocchatError):
                log.error("actor_failed", actor=type(self).__name__, key=self.key, exc_info=result)
            await replies.fail(envelope.request, result)
        else:
            await replies.ok(envelope.request, result)
