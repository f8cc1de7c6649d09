"""Barriers on nats-py connections: once one returns, the server has processed what was sent before it."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription

log = structlog.get_logger("nats")


async def flushed(nc: Client) -> None:
    """Return once the server has processed every SUB, UNSUB and PUB sent on nc before the call.

    nats-py 2.16's `flush()` writes its PING straight to the socket, ahead of the commands still
    queued for its flusher task, so its PONG can come back before the server has seen them. The
    first flush lets the flusher write that queue; the second PING follows it on the wire. Works on
    any Client; on an OrderedClient one flush() is enough."""
    await nc.flush()
    await nc.flush()


async def let_go(sub: Subscription) -> None:
    """Drain sub: stop its interest, but handle what the server routed to it before it knew. Never
    raises: a connection that is closing or gone has nothing left to deliver, so that is logged."""
    try:
        await sub.drain()
    except Exception as exc:  # noqa: BLE001 - closing, closed or draining: callers go on stopping
        log.warning("subscription_not_drained", subject=sub.subject, error=repr(exc))


class OrderedClient(Client):
    """A nats-py Client whose PINGs go out behind the commands queued before them.

    So its `flush()` is a barrier, and `Subscription.drain()` (UNSUB, a PING round trip, then the
    messages left) no longer drops what the server routes after the PING but before the UNSUB: with
    the stock Client, some requests sent to a draining responder time out."""

    async def _send_ping(self, future: asyncio.Future | None = None) -> None:
        # Overrides nats-py's private method, the one place the PING jumps the queue; tests/test_barrier.py
        # checks the wire order, so a nats-py release that changes this shows there.
        if self.is_connected and self._pending and self._transport is not None:
            self._transport.writelines(self._pending)
            self._pending = []
            self._pending_data_size = 0
        await super()._send_ping(future)
