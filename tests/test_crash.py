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


async def start_assistant(settings, fake: FakeAnthropic) -> asyncio.subprocess.Process:
    """`docchat assistant` as its own process, on the test's NATS and SQLite file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DOCCHAT_NATS_URL": settings.nats_url, "DOCCHAT_SERVICE_PASSWORD": SERVICE_PASSWORD,
           "DOCCHAT_DB_PATH": str(settings.database), "DOCCHAT_DATA_DIR": settings.data_dir,
           "DOCCHAT_MODEL_BASE_URL": fake.base_url, "ANTHROPIC_API_KEY": "test-key",
           "DOCCHAT_REPLY_LEASE_SECONDS": "1", "DOCCHAT_STUCK_REPLY_SECONDS": "1.5",
           "DOCCHAT_MODEL_RETRIES": "0", "DOCCHAT_DELTA_INTERVAL_MS": "10", "DOCCHAT_LOG_LEVEL": "warning",
           "DOCCHAT_MODEL_STALL_SECONDS": "60"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", "assistant", env=env, cwd=ROOT)


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
