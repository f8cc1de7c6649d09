"""Scale-out: docchat hosts on a 3-node NATS cluster with the PostgreSQL store, one owner per partition."""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts.client import AdminClient, DocchatClient
from contracts.subjects import partition_of
from tests.clusterfixture import nats_cluster  # noqa: F401 - a fixture
from tests.multihost import Deployment
from tests.pgserver import new_database
from tests.procs import check_history, wait_settled


@pytest.fixture
async def deployment(tmp_path, nats_cluster, postgres):  # noqa: F811
    async with Deployment(tmp_path, nats_cluster, await new_database(postgres)) as d:
        yield d


async def test_two_hosts_split_the_partitions_and_a_killed_hosts_partitions_answer_within_5s(deployment):
    d = deployment
    await d.add("h1")
    await d.add("h2")
    await d.wait_spread({"h1", "h2"})
    admin = AdminClient(d.nc)
    users = [f"user{i}" for i in range(12)]
    for u in users:
        await admin.grant("doc", u)
    clients = {u: DocchatClient(d.nc, u, retry_for=10) for u in users}
    sids = {u: (await c.get_or_create("doc")).session.id for u, c in clients.items()}
    for u, c in clients.items():
        await c.send(sids[u], "before")
    owners = await d.owners()
    victims = [u for u in users if owners[partition_of(u)] == "h1"]
    assert victims, "no test user on h1"

    await d.kill("h1")
    killed = time.monotonic()
    await asyncio.gather(*(clients[u].send(sids[u], "after") for u in victims))
    assert time.monotonic() - killed < 5.0
    await d.wait_spread({"h2"})
    for u in users:
        check_history(await wait_settled(clients[u], sids[u]), {})
