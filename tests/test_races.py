"""Races over real NATS and the fake Messages API: a cancel against the last delta, two retries at once."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from actors.ids import now_ms
from contracts.barrier import flushed
from contracts.client import DocchatClient
from contracts.errors import Conflict
from contracts.events import DeltaEvent, MessageEvent
from contracts.subjects import cancel_subject
from tests.conftest import SERVICE_PASSWORD
from tests.fakeapi import Fail, Reply
from tests.test_assistant import assistant_settings, chat, deltas_text, fake, service, until_ended  # noqa: F401

ITERATIONS = 20


async def test_a_cancel_racing_the_last_delta_keeps_content_and_deltas_equal(chat, fake):
    alice, sid = chat
    events = await alice.subscribe(sid)
    ended: set[str] = set()
    outcomes = []
    for i in range(ITERATIONS):
        # Chunks 10 ms apart (deltas are coalesced per 20 ms): the cancel lands 0..38 ms after the first
        # delta, so before, during and after the last chunk, the final flush and the store's end.
        fake.script(Reply(["alpha ", "beta ", "gamma ", "delta"], delay=0.01))
        sent = await alice.send(sid, f"race {i}", "")
        seen = []
        while not any(isinstance(e, DeltaEvent) and e.message_id == sent.reply.id for e in seen):
            seen.append(await events.next(5))
        await asyncio.sleep(i * 0.002)
        started = asyncio.get_running_loop().time()
        answer = await alice.cancel(sid, sent.reply.id)
        # Generous for a loaded CI machine: a cancel landing as the reply ends is answered at once, or, if
        # nats-py dropped the ask with the assistant's subscription, after one short ask (sessions/cancel.py).
        assert asyncio.get_running_loop().time() - started < 2.5, f"iteration {i}: the cancel went unanswered"
        more, final = await until_ended(events, sent.reply.id)
        seen += more
        late = [e for e in seen if isinstance(e, DeltaEvent) and e.message_id in ended]
        assert not late, f"iteration {i}: a delta of an ended reply arrived after its final event"
        ended.add(sent.reply.id)

        assert final.status in ("cancelled", "complete"), f"iteration {i}: {final.status}"
        assert answer == final, f"iteration {i}: the cancel reply is the stored end"
        assert final.content == deltas_text(seen, sent.reply.id), f"iteration {i}: content is what deltas carried"
        stored = (await alice.messages(sid, after_seq=final.seq - 1, limit=1)).messages[0]
        assert stored == final
        outcomes.append(final.status)

    with pytest.raises(asyncio.TimeoutError):  # nothing more: in particular no delta after a final event
        while True:
            ev = await events.next(0.3)
            assert not (isinstance(ev, DeltaEvent) and ev.message_id in ended), "a delta after the final event"
    assert set(outcomes) <= {"cancelled", "complete"}


async def test_a_lost_cancel_ask_costs_one_short_ask_not_the_whole_wait(host, nc, admin, user):
    """An ask can be lost on its way (stock nats-py's drain lost them as the assistant stopped listening,
    contracts/barrier.py): the session actor then finds the reply ended in the store after one short ask."""
    await admin.grant("doc", "alice")
    alice = user("alice")
    sid = (await alice.get_or_create("doc")).session.id
    sent = await alice.send(sid, "hello", "")  # no assistant in this host: the reply waits
    asks, ended = [], []

    async def end_but_lose_the_ask(msg) -> None:  # the reply ends as the ask arrives; nobody answers it
        asks.append(msg)
        ended.append(await host.store.finish_reply(sent.reply.id, None, "complete", "done", now_ms()))

    sub = await nc.subscribe(cancel_subject(sent.reply.id), cb=end_but_lose_the_ask)
    await flushed(nc)
    started = time.monotonic()
    answer = await alice.cancel(sid, sent.reply.id)
    elapsed = time.monotonic() - started
    await sub.unsubscribe()
    assert len(asks) == 1 and ended[0] is not None
    assert answer == ended[0] and (answer.status, answer.content) == ("complete", "done")
    assert elapsed < 2.0, f"the cancel waited {elapsed:.1f} s for an answer that was lost"


async def test_two_retries_from_two_connections_generate_once(chat, fake, nats_server):
    alice, sid = chat
    fake.script(Fail(400))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "fail first", "")
    _, failed = await until_ended(events, sent.reply.id)
    assert failed.status == "failed"
    other_nc = await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD)
    try:
        other = DocchatClient(other_nc, "alice")
        fake.script(Reply(["again"], delay=0.02))
        calls = len(fake.requests)
        results = await asyncio.gather(alice.retry(sid, sent.reply.id), other.retry(sid, sent.reply.id),
                                       return_exceptions=True)
    finally:
        await other_nc.close()
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Message"]
    assert any(isinstance(r, Conflict) for r in results)
    seen, done = await until_ended(events, sent.reply.id)
    assert (done.status, done.content) == ("complete", "again") and deltas_text(seen, sent.reply.id) == "again"
    assert len(fake.requests) == calls + 1
    statuses = [e.message.status for e in seen if isinstance(e, MessageEvent) and e.message.id == sent.reply.id]
    assert statuses == ["pending", "streaming", "complete"]
