"""Restart nats-server under load: everyone reconnects by themselves, nothing waiting in JetStream is
lost, and requests made while it is down fail with a clear error instead of hanging."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import nats.errors
import pytest

from actors.assistant.service import Assistant
from actors.host import connect, running
from actors.natsserver import EmbeddedNats
from actors.store import SqliteStore
from contracts.client import AdminClient, DocchatClient
from contracts.errors import DocchatError
from contracts.events import MessageEvent
from tests.conftest import CALLOUT_PASSWORD, SERVICE_PASSWORD
from tests.procs import check_history, wait_settled
from gateway.keys import server_env


@pytest.fixture
async def broker(tmp_path, callout_keys):
    """A nats-server of this test's own: after the first start its ports and store dir stay fixed,
    so stop() then start() is a restart clients can find again."""
    server = EmbeddedNats(store_dir=tmp_path / "jetstream", service_password=SERVICE_PASSWORD,
                          extra_env=server_env(callout_keys, CALLOUT_PASSWORD))
    async with server:
        yield server


@pytest.fixture
async def client(broker):
    """A caller's connection as an application would open it: default reconnect settings but a short wait."""
    conn = await nats.connect(broker.url, user="docchat", password=SERVICE_PASSWORD, reconnect_time_wait=0.5,
                              max_reconnect_attempts=-1)
    yield conn
    await conn.close()


def service_settings(settings, broker, **changes):
    return msgspec.structs.replace(settings, **{
        "nats_url": broker.url, "model_provider": "offline", "run_assistant": True, "reply_lease_seconds": 1.0,
        "delta_interval_ms": 10, **changes})


async def wait_connected(*conns, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.is_connected for c in conns):
        assert time.monotonic() < deadline, "a connection did not come back after the restart"
        await asyncio.sleep(0.05)


async def test_broker_restart_under_load_everyone_reconnects_and_events_flow_again(settings, broker, client):
    async with running(service_settings(settings, broker), broker.url) as host:
        await AdminClient(client).grant("doc", "alice")
        alice = DocchatClient(client, "alice", timeout=1.0)
        sid = (await alice.get_or_create("doc")).session.id
        events = await alice.subscribe(sid)
        acked: dict[str, int] = {}
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                began = time.monotonic()
                try:
                    sent = await alice.send(sid, f"m{i}", "", client_message_id=f"c{i}")
                    acked[sent.message.id] = sent.message.seq
                    outcomes.append("ok")
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                        DocchatError) as exc:
                    outcomes.append(type(exc).__name__)
                    await asyncio.sleep(0.05)
                # Never hangs: each request ends by its own timeout.
                assert time.monotonic() - began < 5

        task = asyncio.create_task(load())
        while len(acked) < 10:
            await asyncio.sleep(0.02)
        await broker.stop()
        down = len(outcomes)
        await asyncio.sleep(1.5)  # the outage: requests in it time out
        assert len(outcomes) > down and all(o != "ok" for o in outcomes[down:])
        await broker.start()
        await wait_connected(client, host.nc)
        before = len(acked)
        deadline = time.monotonic() + 15
        while len(acked) < before + 10:  # the service answers again, without any restart of its own
            assert time.monotonic() < deadline, f"no sends acknowledged after the restart: {outcomes[-5:]}"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

        # A subscription made before the restart still receives the session's events.
        sent = await alice.send(sid, "after the restart", "")
        got = []
        while not any(isinstance(e, MessageEvent) and e.message.id == sent.reply.id and e.message.status == "complete"
                      for e in got):
            got.append(await events.next(10))

        # A send that timed out during the outage may have been stored after all (nats-py buffers
        # publishes while reconnecting): resending it with the same clientMessageId stores nothing more.
        for i in range(1, len(outcomes) + 1):
            again = await alice.send(sid, f"m{i}", "", client_message_id=f"c{i}")
            if again.message.id in acked:
                assert again.message.seq == acked[again.message.id]
        alice.timeout = 5.0
        history = await wait_settled(alice, sid)
        check_history(history, acked)
        assert len([m for m in history if m.role == "user"]) == len(outcomes) + 1


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_replies_waiting_in_jetstream_survive_a_broker_restart(settings, broker, client, how):
    # The service runs without an assistant, so the scheduled replies wait in JetStream; the sweeper
    # is set far off, so what gets them delivered after the restart is JetStream itself.
    quiet = service_settings(settings, broker, run_assistant=False, stuck_reply_seconds=600.0)
    async with running(quiet, broker.url) as host:
        await AdminClient(client).grant("doc", "bob")
        bob = DocchatClient(client, "bob")
        sids = [(await bob.get_or_create("doc")).session.id]
        await AdminClient(client).grant("doc2", "bob")
        sids.append((await bob.get_or_create("doc2")).session.id)
        for sid in sids:
            for i in range(3):
                await bob.send(sid, f"waiting {i}", "")
        while await host.store.outbox_pending(10):  # relayed: JetStream holds the work now
            await asyncio.sleep(0.05)
        # SIGTERM, or SIGKILL: nats.conf's `sync_interval: always` fsyncs each acknowledged publish.
        await (broker.stop() if how == "stop" else broker.kill())
        await broker.start()
        await wait_connected(client, host.nc)
        # An assistant started only now, on its own connection, finds the work in JetStream.
        anc = await connect(quiet, broker.url, "test-assistant")
        try:
            async with SqliteStore(quiet.database) as store, Assistant(anc, store, quiet):
                for sid in sids:
                    history = await wait_settled(bob, sid, timeout=15)
                    check_history(history, {})
                    assert [m.content for m in history if m.role == "assistant"] == [
                        f"[offline model] You said: waiting {i}" for i in range(3)]
        finally:
            await anc.close()


async def test_a_request_while_the_broker_is_down_fails_promptly_and_the_client_recovers(settings, broker, client):
    async with running(service_settings(settings, broker, run_assistant=False), broker.url) as host:
        await AdminClient(client).grant("doc", "carol")
        carol = DocchatClient(client, "carol", timeout=1.0)
        sid = (await carol.get_or_create("doc")).session.id
        await broker.stop()
        began = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await carol.messages(sid)
        assert time.monotonic() - began < 3
        await broker.start()
        await wait_connected(client, host.nc)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert (await carol.messages(sid)).messages == []
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)


async def test_the_service_stops_cleanly_and_promptly_while_the_broker_is_down(settings, broker):
    # SIGTERM during an outage: the service must still shut down in order, not end in a NATS error.
    async with running(service_settings(settings, broker), broker.url) as host:
        await broker.stop()
        deadline = time.monotonic() + 10
        while host.nc.is_connected:
            assert time.monotonic() < deadline, "the service never noticed the broker went away"
            await asyncio.sleep(0.05)
        began = time.monotonic()
    took = time.monotonic() - began
    assert host.nc.is_closed
    assert took < 5, f"stopping took {took:.1f} s"
