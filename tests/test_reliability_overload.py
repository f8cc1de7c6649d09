"""Overload: a flooded session answers 503 for what its mailbox cannot hold and stores nothing for it,
other sessions keep answering; a subscriber that never reads is cut off by NATS, not buffered by us."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import msgspec
import pytest

import nats

from actors.host import running
from actors.natsserver import CONF, EmbeddedNats
from contracts.client import AdminClient, DocchatClient
from contracts.subjects import session_subject
from gateway.keys import server_env
from tests.conftest import CALLOUT_PASSWORD, SERVICE_PASSWORD
from tests.procs import DocchatProcess, check_history, wait_settled


async def raw_send(nc, subject: str, body: dict) -> str | None:
    """The error code of a send (None when it succeeded)."""
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=20)
    return msg.headers.get("Nats-Service-Error-Code") if msg.headers else None


async def test_a_flooded_session_answers_503_stores_nothing_for_it_and_other_sessions_keep_answering(
        settings, nats_server, admin, nc, user):
    tight = msgspec.structs.replace(settings, mailbox_size=4)
    async with running(tight, nats_server.url):
        alice = user("alice")
        sids = []
        for i in range(4):
            await admin.grant(f"doc-{i}", "alice")
            sids.append((await alice.get_or_create(f"doc-{i}")).session.id)
        flooded, others = sids[0], sids[1:]
        big = "x" * 200_000  # each send takes a little time to store, so the mailbox fills

        async def flood() -> list[str | None]:
            return await asyncio.gather(*(raw_send(nc, session_subject("alice", flooded, "send"),
                                                   {"content": f"flood {i}", "documentXml": big})
                                          for i in range(300)))

        async def steady(sid: str) -> list[float]:
            """Sends one at a time on a quiet session; each one's latency."""
            took = []
            for i in range(15):
                began = time.monotonic()
                await alice.send(sid, f"steady {i}", "<doc/>")
                took.append(time.monotonic() - began)
            return took

        codes, *latencies = await asyncio.gather(flood(), *(steady(sid) for sid in others))
        assert set(codes) <= {None, "503"} and "503" in codes, "the flood overflows the mailbox"
        ok = codes.count(None)
        stored = (await alice.messages(flooded, limit=500)).messages
        assert len(stored) == 2 * ok, "a refused send stored something"
        assert [m.seq for m in stored] == list(range(1, 2 * ok + 1))
        for sid in others:  # every quiet-session send was answered, none refused
            assert len((await alice.messages(sid, limit=500)).messages) == 30
        assert max(max(t) for t in latencies) < 10, "quiet sessions kept answering during the flood"


def never_reading_subscriber(url: str, subject: str) -> socket.socket:
    """A raw NATS client that subscribes and then never reads its socket (a stuck browser tab)."""
    host, port = url.removeprefix("nats://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    connect = {"verbose": False, "pedantic": False, "user": "docchat", "pass": SERVICE_PASSWORD, "headers": True,
               "protocol": 1}
    sock.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {subject} 1\r\nPING\r\n".encode())
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read what the server buffered for us; True when it closed the connection."""
    sock.settimeout(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
async def small_buffer_broker(tmp_path, callout_keys):
    """nats-server with the project's nats.conf, but max_pending (what the server buffers for one slow
    client before cutting it off) lowered from 64MB to 8MB, so the test needs less traffic."""
    text = CONF.read_text()
    assert "max_pending: 64MB" in text
    conf = tmp_path / "nats.conf"
    conf.write_text(text.replace("max_pending: 64MB", "max_pending: 8MB"))
    server = EmbeddedNats(store_dir=tmp_path / "jetstream", service_password=SERVICE_PASSWORD, conf=conf,
                          extra_env=server_env(callout_keys, CALLOUT_PASSWORD))
    async with server:
        yield server


async def test_a_subscriber_that_never_reads_is_cut_off_and_the_service_memory_stays_bounded(
        small_buffer_broker, tmp_path):
    broker = small_buffer_broker
    nc = await nats.connect(broker.url, user="docchat", password=SERVICE_PASSWORD)
    proc = await DocchatProcess.serve(broker.url, tmp_path / "docchat.db")
    try:
        await proc.ready(nc)
        admin, alice = AdminClient(nc), DocchatClient(nc, "alice", timeout=20)
        sids = []
        for i in range(8):
            await admin.grant(f"doc-{i}", "alice")
            sids.append((await alice.get_or_create(f"doc-{i}")).session.id)
        content = "y" * 32000  # each send publishes its user message, a delta and the final reply: ~96 KB

        async def publish_events(rounds: int) -> tuple[int, float]:
            """(RSS growth of the service, slowest send) over `rounds` sends on every session."""
            before, slowest = proc.rss_bytes(), 0.0
            for _ in range(rounds):
                began = time.monotonic()
                await asyncio.gather(*(alice.send(sid, content, "") for sid in sids))
                slowest = max(slowest, time.monotonic() - began)
            return proc.rss_bytes() - before, slowest

        rounds = 40  # 320 sends, ~30 MB of events: nearly 4x what the server buffers for the slow client
        control, _ = await publish_events(rounds)  # the same work with nobody stuck, for comparison
        stuck = await asyncio.to_thread(never_reading_subscriber, broker.url, "chat.u.alice.sessions.*.events")
        grown, slowest = await publish_events(rounds)
        assert await asyncio.to_thread(closed_by_server, stuck, 10), "the server cut the slow consumer off"
        # Were the service buffering for the stuck subscriber, it would grow by ~30 MB more than the control.
        assert grown < control + 16 * 1024 * 1024, (control, grown)
        assert slowest < 10, "sends kept being answered while the subscriber was stuck"
        for sid in sids[:2]:
            check_history(await wait_settled(alice, sid, timeout=20), {})
    finally:
        await proc.kill()
        await nc.close()
