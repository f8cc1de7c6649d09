"""Several docchat hosts (real processes) on a 3-node NATS cluster sharing one PostgreSQL database.

    async with Deployment(root, nats_cluster, store_url) as d:
        await d.add("h1"); await d.add("h2")
        await d.wait_spread({"h1", "h2"})      # every partition owned, evenly, by exactly these hosts
        await d.kill("h1")                      # kill -9
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from pathlib import Path

import asyncpg
import nats
from nats.aio.client import Client

from actors.natscluster import NatsCluster
from contracts.subjects import PARTITIONS
from tests.conftest import SERVICE_PASSWORD
from tests.procs import DocchatProcess

# Leases short enough that a dead host's partitions move within the 5 s the issue allows.
HOST_ENV = {"DOCCHAT_LEASE_SECONDS": "2", "DOCCHAT_LEASE_RENEW_SECONDS": "0.5", "DOCCHAT_STREAM_REPLICAS": "3"}


class Deployment:
    """Named docchat hosts on one cluster and one database; `async with` stops every host on exit."""

    def __init__(self, root: Path, cluster: NatsCluster, store_url: str) -> None:
        self.root, self.cluster, self.store_url = root, cluster, store_url
        self.hosts: dict[str, DocchatProcess] = {}
        self.nc: Client | None = None
        self.db: asyncpg.Connection | None = None

    async def __aenter__(self) -> "Deployment":
        self.nc = await nats.connect(self.cluster.servers, user="docchat", password=SERVICE_PASSWORD,
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        self.db = await asyncpg.connect(self.store_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for name in list(self.hosts):
            await self.kill(name)
        if self.db is not None:
            await self.db.close()
        if self.nc is not None:
            await self.nc.close()

    async def add(self, name: str, **env: str) -> DocchatProcess:
        """Start host `name` and wait until it answers (it may own no partition yet)."""
        proc = await DocchatProcess.serve(",".join(self.cluster.urls), self.root / f"{name}.db",
                                          DOCCHAT_STORE_URL=self.store_url, DOCCHAT_HOST_ID=name,
                                          **{**HOST_ENV, **env})
        self.hosts[name] = proc
        assert self.nc is not None
        await proc.ready(self.nc, timeout=60)
        return proc

    async def stop(self, name: str) -> None:
        """SIGTERM: the host hands its partitions over and exits."""
        await self.hosts.pop(name).terminate()

    async def kill(self, name: str) -> None:
        await self.hosts.pop(name).kill()

    def freeze(self, name: str) -> None:
        self.hosts[name].proc.send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.hosts[name].proc.send_signal(signal.SIGCONT)

    async def owners(self) -> dict[int, str]:
        """Partition → the host holding an unexpired lease on it (partitions nobody holds are absent)."""
        assert self.db is not None
        rows = await self.db.fetch("SELECT p, owner FROM partition_lease"
                                   " WHERE owner IS NOT NULL AND expires_at > clock_timestamp()")
        return {r[0]: r[1] for r in rows}

    async def wait_spread(self, names: set[str], timeout: float = 20.0) -> float:
        """Seconds until every partition is held by one of names and none holds more than its share."""
        started = time.monotonic()
        share = math.ceil(PARTITIONS / len(names))
        while True:
            owners = await self.owners()
            counts = {n: list(owners.values()).count(n) for n in names}
            if (len(owners) == PARTITIONS and set(owners.values()) == names
                    and max(counts.values()) <= share):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"partitions not spread over {sorted(names)} in {timeout}s: {counts}, "
                                     f"{PARTITIONS - len(owners)} unowned")
            await asyncio.sleep(0.1)
