"""The model's chunks, read by a task of their own, waiting for the assistant to take them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable


class ChunkInbox:
    """Chunks read so far; `wait(deadline)` returns when some are there, the stream ended, or at deadline.

    One reader task per reply, and one future per wait, instead of a task and an `asyncio.wait` per
    chunk: chunks that arrive together are taken together, and a slow stream is never cancelled mid-read.
    """

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None

    async def fill(self, stream: AsyncIterable[str]) -> None:
        """Read the whole stream into the inbox; its error, if any, is this task's."""
        try:
            async for chunk in stream:
                self.chunks.append(chunk)
                self.wake()
        finally:
            self.ended = True
            self.wake()

    def take(self) -> str:
        """Every chunk waiting, joined, and the inbox emptied."""
        text = "".join(self.chunks)
        self.chunks.clear()
        return text

    async def wait(self, deadline: float) -> None:
        """Until a chunk is waiting, the stream ended, or time.monotonic() reaches deadline."""
        if self.chunks or self.ended:
            return
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), self.wake)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
