"""The local 3-node cluster: subject mappings route across nodes, R3 JetStream survives losing its leader."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError

from actors.natscluster import NatsCluster
from actors.relay import ensure_stream
from contracts.subjects import REPLY_PREFIX, REPLY_STREAM
from tests import clusterfixture
from tests.conftest import SERVICE_PASSWORD

nats_cluster = clusterfixture.nats_cluster  # the fixture, visible to this module's tests


async def connect(cluster: NatsCluster, first: int) -> Client:
    """A service connection that starts at node `first` and knows every node, to reconnect on its own."""
    servers = cluster.servers[first:] + cluster.servers[:first]
    return await nats.connect(servers=servers, user="docchat", password=SERVICE_PASSWORD, dont_randomize=True,
                              reconnect_time_wait=0.1, max_reconnect_attempts=-1)


async def test_mapped_request_crosses_nodes(nats_cluster: NatsCluster) -> None:
    responder, caller = await connect(nats_cluster, 2), await connect(nats_cluster, 0)
    try:
        assert responder.connected_url.port == nats_cluster.nodes[2].port
        assert caller.connected_url.port == nats_cluster.nodes[0].port
        seen: list[str] = []

        async def answer(msg) -> None:
            seen.append(msg.subject)
            await msg.respond(b"ok:" + msg.data)

        await responder.subscribe("chat.u.*.p.*.sessions.getOrCreate", cb=answer)
        await responder.flush()
        deadline = time.monotonic() + 5  # the interest reaches node 1 over the route asynchronously
        while True:
            try:
                reply = await caller.request("chat.u.alice.sessions.getOrCreate", b"hi", timeout=1)
                break
            except (NoRespondersError, NatsTimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert reply.data == b"ok:hi"
        assert seen == ["chat.u.alice.p.39.sessions.getOrCreate"]
    finally:
        await responder.close()
        await caller.close()


async def publish_acked(js, subject: str, payload: bytes, msg_id: str, within: float = 30.0) -> None:
    """Publish until JetStream acknowledges (retries ride out reconnects and elections; Nats-Msg-Id dedups)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await js.publish(subject, payload, timeout=1, headers={"Nats-Msg-Id": msg_id})
            return
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, nats.errors.ConnectionClosedError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def replica_messages(cluster: NatsCluster, i: int) -> int | None:
    """How many messages node i's replica of the reply stream holds (None if it has none)."""
    _, jsz = await cluster.monitor(i, "/jsz?accounts=true&streams=true")
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail["name"] == REPLY_STREAM:
                return detail["state"]["messages"]
    return None


async def test_r3_stream_survives_leader_kill(nats_cluster: NatsCluster) -> None:
    nc = await connect(nats_cluster, 0)
    try:
        js = nc.jetstream()
        await ensure_stream(js, replicas=3)
        info = await js.stream_info(REPLY_STREAM)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        subject = f"{REPLY_PREFIX}.s1"
        for n in range(20):
            await publish_acked(js, subject, f"before-{n}".encode(), f"b{n}")

        leader = await nats_cluster.stream_leader(REPLY_STREAM)
        killed_at = time.monotonic()
        await nats_cluster.kill(leader)
        await publish_acked(js, subject, b"after-0", "a0")
        failover = time.monotonic() - killed_at
        assert failover < 15, f"no acknowledged publish for {failover:.1f}s after the leader died"
        for n in range(1, 10):
            await publish_acked(js, subject, f"after-{n}".encode(), f"a{n}")
        new_leader = await nats_cluster.stream_leader(REPLY_STREAM)
        assert new_leader != leader

        info = await js.stream_info(REPLY_STREAM)
        assert info.state.messages == 30
        bodies = [(await js.get_msg(REPLY_STREAM, seq)).data for seq in range(1, 31)]
        assert bodies == [f"before-{n}".encode() for n in range(20)] + [f"after-{n}".encode() for n in range(10)]

        await nats_cluster.start_node(leader)
        status, _ = await nats_cluster.monitor(leader, "/healthz?js-enabled-only=true")
        assert status == 200
        async with asyncio.timeout(10):  # its replica catches up on what was published while it was down
            while await replica_messages(nats_cluster, leader) != 30:
                await asyncio.sleep(0.1)
    finally:
        await nc.close()
