"""The lifespan of one docchat process: build every part, start them in order, stop them in reverse.

Shutdown order (exit runs bottom-up): the admin service stops → every partition's mailboxes close,
its actors finish their queues and its service drains (leases are handed back) → the admin actor
finishes → the auth callout stops → the assistant stops (its running replies are handed back) → the
relay publishes what is left → the store closes → NATS drains (in an outage, the connection just closes).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import nats.errors
import structlog
from nats.aio.client import Client

from contracts.barrier import OrderedClient
from gateway.callout import AuthCallout
from gateway.keys import load_keys

from .access import Access, GrantsAccess, ServiceAccess, listen_for_changes
from .assistant.service import Assistant
from .deps import Deps
from .endpoints import Endpoints, admin_routes
from .events import Events
from .limits import Limits
from .relay import Relay, ensure_stream
from .ownership import LeasedOwnership, Ownership, StaticOwnership
from .runtime.directory import Directory
from .sessions.admin import AdminActor
from .settings import Settings
from .store import LeaseStore, Store, open_store

log = structlog.get_logger("host")


@dataclass
class Host:
    """The running parts of a docchat process, for the caller (and tests) to inspect."""

    settings: Settings
    nc: Client
    store: Store
    ownership: Ownership
    relay: Relay


async def connect(settings: Settings, url: str, name: str, user: str = "", password: str = "") -> Client:
    """A service connection (the service user unless told otherwise) that never gives up reconnecting.

    url may list several servers of one cluster, comma-separated."""
    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", connection=name, error=str(exc))

    async def on_disconnect() -> None:
        if nc.is_closed or nc.is_draining:  # our own shutdown, not an outage
            log.info("nats_closed", connection=name)
        else:
            log.warning("nats_disconnected", connection=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", connection=name)

    nc = OrderedClient()  # flush() and drain() as barriers (contracts/barrier.py)
    await nc.connect(url.split(","), user=user or settings.nats_user, password=password or settings.service_password,
                     name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=on_error,
                     disconnected_cb=on_disconnect, reconnected_cb=on_reconnect)
    return nc


async def close(nc: Client) -> None:
    """Drain the connection (answer what was routed to us, flush what we publish), then close it; one
    that is down just closes, since nothing more can reach the server through it."""
    try:
        await nc.drain()
    except nats.errors.Error as exc:  # reconnecting or already closed (an outage at shutdown)
        log.warning("nats_not_drained", error=repr(exc))
        try:
            await nc.close()
        except OSError:  # nats-py flushes what it buffered for the reconnect into the dead socket
            pass


def make_access(settings: Settings, nc: Client, store: Store) -> Access:
    if settings.access_mode == "service":
        return ServiceAccess(nc, store, settings.documents_subject, settings.access_cache_seconds,
                             settings.access_timeout_seconds)
    if settings.access_mode != "grants":
        raise ValueError(f"DOCCHAT_ACCESS_MODE must be grants or service, not {settings.access_mode!r}")
    return GrantsAccess(store, settings.access_cache_seconds)


async def answering(nc: Client, tries: int = 50) -> None:
    """Return once the server routes a request to our endpoints (our own $SRV.PING answers)."""
    for _ in range(tries):
        try:
            await nc.request("$SRV.PING.docchat", b"", timeout=0.5)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.05)
    raise RuntimeError("the docchat endpoints do not answer")


@asynccontextmanager
async def running(settings: Settings, url: str) -> AsyncIterator[Host]:
    """Run the session actors and endpoints against the NATS server at url."""
    async with AsyncExitStack() as stack:
        nc = await connect(settings, url, "docchat-actors")
        stack.push_async_callback(close, nc)
        js = nc.jetstream()
        await ensure_stream(js, settings.stream_replicas)
        store = await stack.enter_async_context(open_store(settings))
        relay = Relay(js, store)
        deps = Deps(nc=nc, store=store, events=Events(nc), access=make_access(settings, nc, store), settings=settings,
                    kick_relay=relay.kick, limits=Limits.from_settings(settings))
        changes = await listen_for_changes(nc, deps.access)
        stack.push_async_callback(changes.unsubscribe)
        admin = Directory(lambda key: AdminActor(key, deps), "admin")
        await stack.enter_async_context(relay)
        if settings.run_assistant:
            await stack.enter_async_context(Assistant(nc, store, settings))
        if settings.run_callout:
            callout_nc = await connect(settings, url, "docchat-callout", "callout", settings.callout_password)
            stack.push_async_callback(close, callout_nc)
            await stack.enter_async_context(AuthCallout(
                callout_nc, settings, load_keys(settings),
                on_admit=lambda claims: store.remember_user(claims.uid, claims.sub)))
        await stack.enter_async_context(admin)
        # The partitions, then the admin service, entered last so left first: the admin subjects go
        # quiet, then each partition answers 503 to new requests while its queued ones finish. The
        # admin service starts after every partition, so an answered admin request means ready.
        ownership: Ownership
        if isinstance(store, LeaseStore):  # a store other hosts share: hold partitions by lease
            ownership = await stack.enter_async_context(LeasedOwnership(deps, store, settings))
        else:
            ownership = await stack.enter_async_context(StaticOwnership(deps))
        await stack.enter_async_context(Endpoints(nc, admin_routes(admin), "docchat administration"))
        await answering(nc)
        log.info("docchat_ready", nats=url, database="postgresql" if settings.store_url else str(settings.database))
        yield Host(settings=settings, nc=nc, store=store, ownership=ownership, relay=relay)
        log.info("docchat_stopping")
