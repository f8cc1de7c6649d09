"""flushed(): once it returns, the server has the connection's subscriptions (nc.flush() does not promise it)."""

from __future__ import annotations

import nats
from nats.aio.client import Client

from contracts.barrier import flushed
from tests.conftest import SERVICE_PASSWORD


def record_writes(nc: Client) -> list[bytes]:
    """The protocol lines nc writes to its socket from now on, in order."""
    wire: list[bytes] = []
    transport = nc._transport  # noqa: SLF001 - the bytes on the wire are what this test is about
    write, writelines = transport.write, transport.writelines
    transport.write = lambda data: (wire.append(bytes(data)), write(data))[1]
    transport.writelines = lambda lines: (wire.extend(bytes(line) for line in lines), writelines(lines))[1]
    return wire


async def test_the_barrier_ping_follows_the_subscription_on_the_wire(nats_server):
    nc = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    try:
        wire = record_writes(nc)
        await nc.subscribe("test.barrier.a")
        await nc.flush()
        # nats-py's own flush: its PING went out before the SUB it was meant to cover.
        assert [line.split()[0] for line in wire] == [b"PING", b"SUB"]

        wire.clear()
        await nc.subscribe("test.barrier.b")
        await flushed(nc)
        ops = [line.split()[0] for line in wire]
        # flushed(): its last PING follows the SUB on the wire.
        assert b"SUB" in ops and ops[-1] == b"PING" and ops.index(b"SUB") < len(ops) - 1
    finally:
        await nc.close()


async def test_a_subscription_is_live_for_other_connections_once_flushed(nats_server):
    listener = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    sender = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    try:
        for i in range(200):
            sub = await listener.subscribe(f"test.barrier.live.{i}")
            await flushed(listener)
            await sender.publish(f"test.barrier.live.{i}", b"x")
            await flushed(sender)
            assert (await sub.next_msg(timeout=2)).data == b"x", f"message {i} was published before the SUB"
            await sub.unsubscribe()
    finally:
        await listener.close()
        await sender.close()
