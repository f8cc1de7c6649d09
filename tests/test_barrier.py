"""flushed() and OrderedClient: once a barrier returns, the server has what the connection sent before
it (stock nats-py's flush() does not promise it, and its Subscription.drain() drops requests)."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
from nats.aio.client import Client

from contracts.barrier import OrderedClient, flushed
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


def ops_of(wire: list[bytes]) -> list[bytes]:
    return [line.split()[0] for line in wire]


async def ordered_client(url: str) -> OrderedClient:
    nc = OrderedClient()
    await nc.connect(url, user="docchat", password=SERVICE_PASSWORD)
    return nc


async def test_the_ordered_client_pings_behind_what_it_queued(nats_server):
    stock = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    ordered = await ordered_client(nats_server.url)
    try:
        stock_wire, ordered_wire = record_writes(stock), record_writes(ordered)
        stock_sub, ordered_sub = await stock.subscribe("test.barrier.c"), await ordered.subscribe("test.barrier.c")
        await stock.flush()
        await ordered.flush()
        assert ops_of(ordered_wire) == [b"SUB", b"PING"]
        stock_wire.clear()
        ordered_wire.clear()
        await stock_sub.drain()
        await ordered_sub.drain()
        # Stock nats-py drains with its PING ahead of its UNSUB; if this ever fails, nats-py fixed it.
        assert ops_of(stock_wire)[:2] == [b"PING", b"UNSUB"]
        assert ops_of(ordered_wire)[:2] == [b"UNSUB", b"PING"]
    finally:
        await stock.close()
        await ordered.close()


async def requests_to_a_draining_responder(url: str, responder: Client, rounds: int) -> dict[str, int]:
    """Requests sprayed at a responder while it drains: how many were answered, found no responder, or timed out."""
    outcomes = {"answered": 0, "no_responders": 0, "timed_out": 0}
    sender = await nats.connect(url, user="docchat", password=SERVICE_PASSWORD)

    async def respond(msg) -> None:
        await msg.respond(b"ok")

    async def ask(subject: str) -> None:
        try:
            await sender.request(subject, b"", timeout=2.0)  # far above an answer here
            outcomes["answered"] += 1
        except nats.errors.NoRespondersError:
            outcomes["no_responders"] += 1
        except nats.errors.TimeoutError:
            outcomes["timed_out"] += 1

    async def spray(subject: str) -> None:
        asks = []
        for _ in range(40):
            asks.append(asyncio.ensure_future(ask(subject)))
            await asyncio.sleep(0)
        await asyncio.gather(*asks)

    try:
        for i in range(rounds):
            sub = await responder.subscribe(f"test.barrier.drain.{i}", cb=respond)
            await flushed(responder)
            sprayed = asyncio.ensure_future(spray(f"test.barrier.drain.{i}"))
            await asyncio.sleep(0.0005 * (i % 7))  # drain at different points of the spray
            await sub.drain()
            await sprayed
    finally:
        await sender.close()
    return outcomes


async def test_a_draining_responder_answers_every_request_routed_to_it(nats_server):
    # A request either reaches the responder before its UNSUB and is answered, or finds no responder
    # after it; none may vanish in between (with the stock Client, 57 to 135 of the 4,000 did, in three runs).
    responder = await ordered_client(nats_server.url)
    try:
        outcomes = await requests_to_a_draining_responder(nats_server.url, responder, rounds=100)
    finally:
        await responder.close()
    assert outcomes["timed_out"] == 0, outcomes
    assert outcomes["answered"] > 0 and outcomes["no_responders"] > 0, outcomes  # the drains fell mid-spray
