"""A real 3-node NATS cluster per test: `from tests.clusterfixture import nats_cluster` in a test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.natscluster import NatsCluster
from gateway.keys import CalloutKeys, server_env
from tests.conftest import CALLOUT_PASSWORD, SERVICE_PASSWORD


@pytest.fixture
async def nats_cluster(tmp_path: Path, callout_keys: CalloutKeys) -> AsyncIterator[NatsCluster]:
    """Three routed nats-servers (nats.conf + cluster block, JetStream meta leader elected), stopped after the test."""
    async with NatsCluster(tmp_path / "cluster", service_password=SERVICE_PASSWORD,
                           extra_env=server_env(callout_keys, CALLOUT_PASSWORD)) as cluster:
        yield cluster
