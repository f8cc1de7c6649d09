"""Fixtures: a real nats-server per test session → a service connection → a docchat host per test."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import hypothesis  # noqa: F401 - imported here: its late import at summary time crashes 3.11.7's AST rewrite
import nats
import pytest
from nats.aio.client import Client

from actors.host import running
from actors.logs import configure
from actors.natsserver import EmbeddedNats
from actors.settings import Settings, from_env
from contracts.client import AdminClient, DocchatClient
from gateway.keys import CalloutKeys, server_env
from actors.pgserver import PgServer, bin_dir

SERVICE_PASSWORD = "test-service-password"
CALLOUT_PASSWORD = "test-callout-password"
configure("warning")


@pytest.fixture(scope="session")
def callout_keys() -> CalloutKeys:
    """The auth callout's signing nkey and xkey for this test run."""
    return CalloutKeys.create()


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory, callout_keys: CalloutKeys) -> AsyncIterator[EmbeddedNats]:
    """One real nats-server (nats.conf, JetStream on, free ports, temp store dir) for the whole run."""
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("jetstream"), service_password=SERVICE_PASSWORD,
                          extra_env=server_env(callout_keys, CALLOUT_PASSWORD))
    async with server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One PostgreSQL server for the run, started when a test first asks (tests/setup-postgres installs it)."""
    assert bin_dir() is not None, "PostgreSQL is not installed: run tests/setup-postgres (./dev test does)"
    with PgServer() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    """Settings for one test: its own SQLite file, the shared server, no assistant or callout."""
    return from_env({}, nats_url=nats_server.url, service_password=SERVICE_PASSWORD, data_dir=str(tmp_path),
                    run_assistant=False, run_callout=False, idle_seconds=30.0)


@pytest.fixture
async def host(settings: Settings, nats_server: EmbeddedNats):
    """A running docchat process (actors, endpoints, relay) in this event loop."""
    async with running(settings, nats_server.url) as h:
        yield h


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A trusted-service connection, as a backend caller would have."""
    conn = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    yield conn
    await conn.close()


@pytest.fixture
def admin(nc: Client) -> AdminClient:
    return AdminClient(nc)


@pytest.fixture
def user(nc: Client) -> Callable[[str], DocchatClient]:
    """Make a client that calls docchat on behalf of a user `sub`."""
    return lambda sub: DocchatClient(nc, sub)
