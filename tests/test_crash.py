"""Kill -9 the assistant mid-stream: after a restart every acknowledged send still gets exactly one reply."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from actors.host import running
from contracts.events import DeltaEvent, MessageEvent
from tests.conftest import SERVICE_PASSWORD
from tests.fakeapi import FakeAnthropic, Stall

ROOT = Path(__file__).resolve().parent.parent


async def start_assistant(settings, fake: FakeAnthropic, key: str = "test-key",
                          in_flight: int = 16) -> asyncio.subprocess.Process:
    """`docchat assistant` as its own process, on the test's NATS and SQLite file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DOCCHAT_NATS_URL": settings.nats_url, "DOCCHAT_SERVICE_PASSWORD": SERVICE_PASSWORD,
           "DOCCHAT_DB_PATH": str(settings.database), "DOCCHAT_DATA_DIR": settings.data_dir,
           "DOCCHAT_MODEL_BASE_URL": fake.base_url, "ANTHROPIC_API_KEY": key,
           "DOCCHAT_REPLIES_IN_FLIGHT": str(in_flight),
           "DOCCHAT_REPLY_LEASE_SECONDS": "1", "DOCCHAT_STUCK_REPLY_SECONDS": "1.5",
           "DOCCHAT_MODEL_RETRIES": "0", "DOCCHAT_DELTA_INTERVAL_MS": "10", "DOCCHAT_LOG_LEVEL": "warning",
           "DOCCHAT_MODEL_STALL_SECONDS": "60"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", "assistant", env=env, cwd=ROOT)


async def assistants_connected(server, count: int) -> None:
    """Wait until `count` assistant processes are connected (the server's monitoring endpoint says so)."""
    import json
    import urllib.request

    url = f"http://127.0.0.1:{server.http_port}/connz?limit=1000"
    for _ in range(200):
        conns = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read()))
        if sum(c.get("name") == "docchat-assistant" for c in conns.get("connections", [])) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} assistant processes did not connect")


@pytest.fixture
async def fake():
    async with FakeAnthropic() as f:
        yield f


async def test_assistant_killed_mid_stream_and_restarted_gives_exactly_one_reply(settings, nats_server, fake,
                                                                                   admin, user):
    fake.script(Stall(after=1, seconds=None))
    async with running(settings, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        events = await alice.subscribe(sid)
        proc = await start_assistant(settings, fake)
        try:
            sent = await alice.send(sid, "please answer", "<doc/>")
            seen = []
            while sum(isinstance(e, DeltaEvent) for e in seen) < 1:  # mid-stream
                seen.append(await events.next(15))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await start_assistant(settings, fake)
            final = None
            while final is None:
                ev = await events.next(20)
                seen.append(ev)
                if isinstance(ev, MessageEvent) and ev.message.id == sent.reply.id and ev.message.status == "complete":
                    final = ev.message
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        history = (await alice.messages(sid)).messages
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1] == final and final.id == sent.reply.id
    assert final.content == "Echo: please answer"
    restarts = [e for e in seen if isinstance(e, DeltaEvent) and e.offset == 0]
    assert len(restarts) >= 2, "the reply was started over from offset 0 after the takeover"


async def test_replies_waiting_when_the_assistant_died_are_all_delivered(settings, nats_server, fake, admin, user):
    fake.script(Stall(after=0, seconds=None))
    async with running(settings, nats_server.url):
        await admin.grant("doc", "bob")
        bob = user("bob")
        sid = (await bob.get_or_create("doc")).session.id
        proc = await start_assistant(settings, fake)
        try:
            for i in range(4):
                await bob.send(sid, f"q{i}", "")
            while not fake.requests:  # the first reply is being generated (and stalls)
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await start_assistant(settings, fake)
            for _ in range(200):
                history = (await bob.messages(sid)).messages
                if all(m.status == "complete" for m in history):
                    break
                await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    assert [m.seq for m in history] == list(range(1, 9))
    assert [m.content for m in history if m.role == "assistant"] == [f"Echo: q{i}" for i in range(4)]


async def test_assistant_processes_side_by_side_generate_each_reply_exactly_once(settings, nats_server, admin, user):
    """Two `docchat assistant` processes share the work queue: every reply is generated once, by one of them."""
    import dataclasses

    from tests.fakeapi import echo_reply

    async with FakeAnthropic(default=lambda body: dataclasses.replace(echo_reply(body), delay=0.08)) as fake:
        async with running(settings, nats_server.url):
            procs = [await start_assistant(settings, fake, key=f"key-{name}", in_flight=4) for name in "ab"]
            try:
                await assistants_connected(nats_server, 2)
                clients = []
                for i in range(12):
                    await admin.grant(f"doc-{i}", f"user{i}")
                    client = user(f"user{i}")
                    clients.append((client, (await client.get_or_create(f"doc-{i}")).session.id))
                for round_ in range(3):
                    await asyncio.gather(*(c.send(sid, f"q{round_} from {c.sub}", "") for c, sid in clients))
                for _ in range(300):
                    histories = [(await c.messages(sid)).messages for c, sid in clients]
                    if all(len(h) == 6 and all(m.status == "complete" for m in h) for h in histories):
                        break
                    await asyncio.sleep(0.1)
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
    for (client, _), history in zip(clients, histories):
        assert [m.content for m in history] == [text for r in range(3) for text in (
            f"q{r} from {client.sub}", f"Echo: q{r} from {client.sub}")]
    assert len(fake.requests) == 36, "each reply was generated exactly once"
    keys = {key for h in fake.headers for key in ("key-a", "key-b") if key in (h.get("x-api-key", ""), h.get("authorization", ""))
            or h.get("authorization", "").endswith(" " + key)}
    assert keys == {"key-a", "key-b"}, "both processes took work"
