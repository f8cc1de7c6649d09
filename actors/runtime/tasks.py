"""Stopping long-lived tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], retry_every: float = 1.0) -> None:
    """Cancel tasks and wait until every one has ended, cancelling again any that is still running.

    On Python 3.11 a cancel that lands as an inner `asyncio.wait_for` completes is swallowed (nats-py
    uses wait_for in fetch and request), so one cancel is not always enough.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_every)
