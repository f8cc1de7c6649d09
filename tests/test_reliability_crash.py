"""kill -9 the whole service (`docchat serve`) under load, start it again: nothing acknowledged is lost,
nothing is doubled, and every send ends with exactly one reply."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import pytest

from contracts.errors import DocchatError
from actors.host import running
from contracts.events import DeltaEvent, MessageEvent
from tests.fakeapi import FakeAnthropic, Stall
from tests.procs import DocchatProcess, check_history, wait_settled

SESSIONS = 4


async def open_sessions(admin, user, n: int = SESSIONS):
    alice = user("alice")
    sids = []
    for i in range(n):
        await admin.grant(f"doc-{i}", "alice")
        sids.append((await alice.get_or_create(f"doc-{i}")).session.id)
    return alice, sids


async def send_forever(alice, sid: str, acked: dict[str, dict[str, int]], errors: list[BaseException],
                       tag: str, stop: asyncio.Event) -> None:
    """Send one message after another until stop; remember each acknowledged one (session → id → seq).

    A flag, not only cancel(): 3.11's wait_for (inside nats-py's request) can swallow a cancel."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            sent = await alice.send(sid, f"{tag} message {i}", "<doc/>")
            acked[sid][sent.message.id] = sent.message.seq
        except (nats.errors.Error, DocchatError, asyncio.TimeoutError) as exc:
            errors.append(exc)  # the service is down or restarting: not acknowledged, may or may not be stored
            await asyncio.sleep(0.05)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "docchat.db"


@pytest.fixture
async def service(nats_server, db_path, nc):
    """A `docchat serve` process; the test may kill it and start others, all are killed at the end."""
    procs: list[DocchatProcess] = []

    async def start(**extra: str) -> DocchatProcess:
        proc = await DocchatProcess.serve(nats_server.url, db_path, **extra)
        procs.append(proc)
        await proc.ready(nc)
        return proc

    yield start
    for proc in procs:
        await proc.kill()


async def test_service_killed_under_load_keeps_every_acknowledged_send_and_answers_each_once(service, admin, user):
    proc = await service()
    alice, sids = await open_sessions(admin, user)
    alice.timeout = 2.0
    acked: dict[str, dict[str, int]] = {sid: {} for sid in sids}
    errors: list[BaseException] = []
    count = lambda: sum(map(len, acked.values()))  # noqa: E731
    stop = asyncio.Event()
    load = [asyncio.create_task(send_forever(alice, sid, acked, errors, f"s{k}", stop)) for k, sid in enumerate(sids)]
    try:
        while count() < 40:  # the kill lands while every session has sends in flight
            await asyncio.sleep(0.02)
        await proc.kill()
        # While it is down a request fails at once with "no responders": it does not hang.
        began = time.monotonic()
        with pytest.raises(nats.errors.NoRespondersError):
            await alice.messages(sids[0])
        assert time.monotonic() - began < 2
        await asyncio.sleep(0.5)
        await service()
        before = count()
        while count() < before + 20:  # the restarted service takes the load again
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load, return_exceptions=True), 10)
    alice.timeout = 5.0
    assert errors, "some sends were refused or timed out while the service was down"
    for sid in sids:
        check_history(await wait_settled(alice, sid), acked[sid])


async def test_service_killed_mid_stream_finishes_each_reply_exactly_once(service, admin, user):
    # Slow replies (0.1 s a word), so the kill lands while replies are streaming.
    slow = {"DOCCHAT_OFFLINE_DELAY_SECONDS": "0.1"}
    proc = await service(**slow)
    alice, sids = await open_sessions(admin, user)
    streams = [await alice.subscribe(sid) for sid in sids]
    acked: dict[str, dict[str, int]] = {sid: {} for sid in sids}
    sent_content: dict[str, str] = {}
    for k, sid in enumerate(sids):
        for i in range(3):
            sent = await alice.send(sid, f"question {i} of session {k} with several words", "<doc/>")
            acked[sid][sent.message.id] = sent.message.seq
            sent_content[sent.message.id] = sent.message.content
    # Wait until a reply has streamed part of its text, then kill.
    deltas = 0
    while deltas < 2:
        event = await streams[0].next(10)
        deltas += isinstance(event, DeltaEvent)
    streaming = [m for sid in sids for m in (await alice.messages(sid)).messages if m.status == "streaming"]
    assert streaming, "the kill is meant to land mid-stream"
    await proc.kill()
    await service(**slow)
    for sid in sids:
        history = await wait_settled(alice, sid, timeout=25)
        check_history(history, acked[sid])
        assert len(history) == 6
        for user_msg, reply in zip(history[::2], history[1::2]):
            assert reply.status == "complete"
            # Taken over from the dead process and written again from the start, not appended to.
            assert reply.content == f"[offline model] You said: {sent_content[user_msg.id]}"
    for stream in streams:
        await stream.close()


# Stuck work: a reply whose assistant vanished ends within a bounded time, set by
# DOCCHAT_REPLY_LEASE_SECONDS + DOCCHAT_STUCK_REPLY_SECONDS, after at most DOCCHAT_REPLY_MAX_ATTEMPTS claims.

@pytest.fixture
async def fake():
    async with FakeAnthropic() as f:
        yield f


@pytest.fixture
async def assistants(nats_server, settings, fake):
    """Start `docchat assistant` processes on the test's NATS and SQLite file, using the fake model API."""
    procs: list[DocchatProcess] = []

    async def start(**extra: str) -> DocchatProcess:
        proc = await DocchatProcess.assistant(
            nats_server.url, settings.database, DOCCHAT_MODEL_PROVIDER="anthropic", DOCCHAT_MODEL_BASE_URL=fake.base_url,
            ANTHROPIC_API_KEY="test-key", DOCCHAT_MODEL_STALL_SECONDS="60", **extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.kill()


async def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll until predicate() is true; how long it took."""
    began = time.monotonic()
    while not await predicate():
        assert time.monotonic() - began < timeout, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_a_reply_whose_assistant_vanished_is_finished_by_another_running_assistant(
        settings, nats_server, fake, assistants, admin, user):
    fake.script(Stall(after=1, seconds=None))  # the first model call hangs forever, the next one answers
    async with running(settings, nats_server.url):
        await admin.grant("doc", "dave")
        dave = user("dave")
        sid = (await dave.get_or_create("doc")).session.id
        first = await assistants()
        sent = await dave.send(sid, "hello there", "")

        async def requested() -> bool:
            return len(fake.requests) == 1

        await wait_for(requested, 15, "the first assistant calls the model")
        second = await assistants()  # running before the first one dies, never restarted itself
        await asyncio.sleep(1.0)
        await first.kill()

        async def finished() -> bool:
            return (await dave.messages(sid)).messages[-1].status == "complete"

        # Lease (1 s) + stuck threshold (1.5 s) + one sweep, with generous slack for a loaded CI machine.
        await wait_for(finished, 15, "the surviving assistant finishes the reply")
        history = (await dave.messages(sid)).messages
        assert second.proc.returncode is None
    check_history(history, {sent.message.id: 1})
    assert history[1].id == sent.reply.id and history[1].content == "Echo: hello there"


async def test_a_reply_that_keeps_losing_its_assistant_fails_with_a_timeout_error_after_max_attempts(
        settings, nats_server, fake, assistants, admin, user):
    fake.script(Stall(after=1, seconds=None), Stall(after=1, seconds=None))  # both claims die mid-stream
    limits = {"DOCCHAT_REPLY_MAX_ATTEMPTS": "2"}
    async with running(settings, nats_server.url):
        await admin.grant("doc", "erin")
        erin = user("erin")
        sid = (await erin.get_or_create("doc")).session.id
        events = await erin.subscribe(sid)
        sent = await erin.send(sid, "will this ever end", "")
        for attempt in (1, 2):
            proc = await assistants(**limits)

            async def requested(n: int = attempt) -> bool:
                return len(fake.requests) >= n

            await wait_for(requested, 15, f"claim {attempt} calls the model")
            await proc.kill()  # vanished mid-stream, holding the lease
        last = await assistants(**limits)

        async def failed() -> bool:
            return (await erin.messages(sid)).messages[-1].status == "failed"

        took = await wait_for(failed, 15, "the reply fails once its claims are used up")
        history = (await erin.messages(sid)).messages
        final = None
        while final is None:
            ev = await events.next(5)
            if isinstance(ev, MessageEvent) and ev.message.id == sent.reply.id and ev.message.status == "failed":
                final = ev.message
        assert last.proc.returncode is None
    assert took < 15
    check_history(history, {sent.message.id: 1})
    reply = history[1]
    assert reply.id == sent.reply.id and reply == final
    assert reply.error is not None and reply.error.code == "reply_timeout"
    assert len(fake.requests) == 2, "no third model call after the attempts ran out"
