"""A real barrier on a nats-py connection: the server has processed everything sent on it so far."""

from __future__ import annotations

from nats.aio.client import Client


async def flushed(nc: Client) -> None:
    """Return once the server has processed every SUB, UNSUB and PUB sent on nc before the call.

    nats-py 2.16's `flush()` writes its PING straight to the socket, ahead of the commands still
    queued for its flusher task, so its PONG can come back before the server has seen them. The
    first flush lets the flusher write that queue; the second PING follows it on the wire."""
    await nc.flush()
    await nc.flush()
