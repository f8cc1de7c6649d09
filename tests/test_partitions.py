"""The server's partition mapping (nats.conf) and contracts.subjects.partition_of agree for every uid."""

from __future__ import annotations

import asyncio

from contracts.subjects import PARTITIONS, partition_of, user_token


async def test_the_server_puts_each_user_in_the_partition_the_hosts_compute(nats_server, nc):
    subs = [f"user{i}" for i in range(200)] + ["alice@example.com", "Ünïcode", "x" * 64, "a-b_c", "h" + "0" * 40]
    uids = [user_token(s) for s in subs]
    seen: dict[str, str] = {}
    done = asyncio.Event()

    async def record(msg) -> None:
        seen[msg.subject.split(".")[2] + msg.subject.rsplit(".", 1)[1]] = msg.subject
        if len(seen) == 2 * len(uids):
            done.set()

    sub = await nc.subscribe("chat.u.*.p.*.sessions.>", cb=record)
    await nc.flush()
    for uid in uids:
        await nc.publish(f"chat.u.{uid}.sessions.getOrCreate", b"")
        await nc.publish(f"chat.u.{uid}.sessions.s1.send", b"")
    await asyncio.wait_for(done.wait(), 5)
    await sub.unsubscribe()
    for uid in uids:
        assert seen[uid + "getOrCreate"] == f"chat.u.{uid}.p.{partition_of(uid)}.sessions.getOrCreate"
        assert seen[uid + "send"] == f"chat.u.{uid}.p.{partition_of(uid)}.sessions.s1.send"
    assert len({partition_of(u) for u in uids}) > PARTITIONS // 2  # users spread over the partitions
