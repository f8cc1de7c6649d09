"""The assistant's reply over real NATS, JetStream and the real anthropic SDK against a local Messages API."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from actors.host import running
from contracts.errors import Conflict, NotFound
from contracts.events import DeltaEvent, MessageEvent
from tests.fakeapi import Fail, FakeAnthropic, Reply, Stall


@pytest.fixture
async def fake():
    async with FakeAnthropic() as f:
        yield f


@pytest.fixture
def assistant_settings(settings, fake, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    return msgspec.structs.replace(settings, run_assistant=True, model_base_url=fake.base_url, model="claude-test",
                                   model_retries=2, model_backoff_seconds=0.01, model_stall_seconds=2.0,
                                   delta_interval_ms=20, stuck_reply_seconds=2.0)


@pytest.fixture
async def service(assistant_settings, nats_server):
    async with running(assistant_settings, nats_server.url) as h:
        yield h


@pytest.fixture
async def chat(service, admin, user):
    """(client, session id) for alice on a granted document."""
    await admin.grant("doc", "alice")
    alice = user("alice")
    return alice, (await alice.get_or_create("doc")).session.id


async def until_ended(events, message_id: str, timeout: float = 10.0) -> tuple[list, object]:
    """Every event until message_id ends; returns (events, final message)."""
    seen = []
    while True:
        ev = await events.next(timeout)
        seen.append(ev)
        if isinstance(ev, MessageEvent) and ev.message.id == message_id and ev.message.status in (
                "complete", "failed", "cancelled"):
            return seen, ev.message


def deltas_text(events, message_id: str) -> str:
    text = ""
    for ev in events:
        if isinstance(ev, DeltaEvent) and ev.message_id == message_id:
            assert ev.offset == len(text), "each delta starts where the previous ones ended"
            text += ev.text
    return text


async def test_reply_streams_then_completes_with_model_and_usage(chat, fake):
    alice, sid = chat
    fake.script(Reply(["The doc", " is about", " cats."], delay=0.05, input_tokens=123, output_tokens=7))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "What is it about?", "<doc>cats</doc>")
    seen, final = await until_ended(events, sent.reply.id)
    statuses = [e.message.status for e in seen if isinstance(e, MessageEvent) and e.message.id == sent.reply.id]
    assert statuses == ["pending", "streaming", "complete"]
    assert final.content == "The doc is about cats." == deltas_text(seen, sent.reply.id)
    assert final.model == "claude-test-20990101"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (123, 7)
    stored = (await alice.messages(sid)).messages[-1]
    assert stored == final
    body = fake.requests[-1]
    assert "<doc>cats</doc>" in body["system"] and body["model"] == "claude-test" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "What is it about?"}]


async def test_partial_content_is_readable_while_streaming(chat, fake):
    alice, sid = chat
    # Five chunks 0.4 s apart: the reply is still streaming a second after the read below.
    fake.script(Reply(["one ", "two ", "three ", "four ", "five"], delay=0.4))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "count", "")
    while True:
        ev = await events.next(5)
        if isinstance(ev, DeltaEvent):
            break
    await asyncio.sleep(0.6)  # the content so far is stored at least every 0.25 s
    mid = (await alice.messages(sid)).messages[-1]
    assert mid.status == "streaming" and mid.content.startswith("one ")
    await until_ended(events, sent.reply.id)


async def test_model_sees_at_most_twenty_complete_messages_in_order(chat, fake):
    alice, sid = chat
    events = await alice.subscribe(sid)
    for i in range(12):
        sent = await alice.send(sid, f"question {i}", f"<doc v='{i}'/>")
        await until_ended(events, sent.reply.id)
    body = fake.requests[-1]
    assert len(body["messages"]) == 20
    # Seqs 4..23: the last 20 complete messages up to and including the newest user message.
    assert [m["role"] for m in body["messages"]] == ["assistant", "user"] * 10
    assert body["messages"][0] == {"role": "assistant", "content": "Echo: question 1"}
    assert body["messages"][1] == {"role": "user", "content": "question 2"}
    assert body["messages"][-1] == {"role": "user", "content": "question 11"}
    assert "<doc v='11'/>" in body["system"]


async def test_replies_of_one_session_run_one_at_a_time_in_order(chat, fake):
    alice, sid = chat
    fake.script(*(Reply([f"answer {i}"], delay=0.2) for i in range(3)))
    events = await alice.subscribe(sid)
    sends = [await alice.send(sid, f"q{i}", "") for i in range(3)]
    await until_ended(events, sends[-1].reply.id, timeout=15)
    final = (await alice.messages(sid)).messages
    assert [m.content for m in final if m.role == "assistant"] == ["answer 0", "answer 1", "answer 2"]
    asked = [[m["content"] for m in r["messages"]] for r in fake.requests[-3:]]
    assert asked == [["q0"], ["q0", "answer 0", "q1"], ["q0", "answer 0", "q1", "answer 1", "q2"]]


async def test_model_failures_are_retried_then_the_reply_fails_with_an_error(chat, fake):
    alice, sid = chat
    fake.script(Fail(529), Fail(500), Fail(529))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "hello?", "")
    _, final = await until_ended(events, sent.reply.id)
    assert final.status == "failed" and final.error.code == "model_unavailable"
    assert "529" not in final.error.message and final.error.message


async def test_a_transient_failure_is_retried_and_the_reply_completes(chat, fake):
    alice, sid = chat
    fake.script(Fail(429, retry_after=0.05), Reply(["fine"]))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "hello?", "")
    _, final = await until_ended(events, sent.reply.id)
    assert (final.status, final.content) == ("complete", "fine")


async def test_a_stalled_model_is_cut_off(chat, fake):
    alice, sid = chat
    fake.script(Stall(after=1), Stall(after=1), Stall(after=1))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "stall please", "")
    seen, final = await until_ended(events, sent.reply.id, timeout=15)
    assert final.status == "failed" and final.error.code == "model_timeout"
    assert final.content == deltas_text(seen, sent.reply.id)


async def test_a_pause_in_the_model_shows_the_text_so_far_and_keeps_the_reply(assistant_settings, nats_server,
                                                                              fake, admin, user):
    # The model sends a word, then pauses for three leases, longer than a reply may sit unclaimed.
    settings = msgspec.structs.replace(assistant_settings, reply_lease_seconds=1.0, stuck_reply_seconds=1.5,
                                       model_stall_seconds=6.0)
    fake.script(Stall(after=1, seconds=3.0, reply=Reply(["first ", "second"])))
    async with running(settings, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        events = await alice.subscribe(sid)
        sent = await alice.send(sid, "pause please", "")
        seen, final = await until_ended(events, sent.reply.id, timeout=15)
    # The word before the pause is shown while the model is silent, not held back until it resumes.
    assert [ev.text for ev in seen if isinstance(ev, DeltaEvent)] == ["first ", "second"]
    # The lease was renewed through the pause: nobody took the reply over and generated it again.
    assert [ev.message.status for ev in seen if isinstance(ev, MessageEvent) and ev.message.id == sent.reply.id] \
        == ["pending", "streaming", "complete"]
    assert final.content == "first second" and len(fake.requests) == 1


async def test_cancel_stops_the_stream_and_keeps_what_was_sent(chat, fake):
    alice, sid = chat
    fake.script(Reply([f"w{i} " for i in range(200)], delay=0.05))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "long answer please", "")
    seen = []
    while sum(isinstance(e, DeltaEvent) for e in seen) < 3:
        seen.append(await events.next(5))
    cancelled = await alice.cancel(sid, sent.reply.id)
    assert cancelled.status == "cancelled"
    more, final = await until_ended(events, sent.reply.id)
    seen += more
    assert final == cancelled
    assert final.content == deltas_text(seen, sent.reply.id) and final.content.startswith("w0 ")
    await asyncio.sleep(0.3)
    with pytest.raises(asyncio.TimeoutError):
        late = await events.next(0.3)
        assert not isinstance(late, DeltaEvent), "no delta after the cancelled event"
    assert await fake.wait_streams_closed(2.0)
    assert (await alice.cancel(sid, sent.reply.id)) == final  # an ended reply comes back unchanged


async def test_cancel_of_a_waiting_reply_and_the_next_one_runs(chat, fake):
    alice, sid = chat
    fake.script(Reply(["slow"], delay=1.0), Reply(["next"]))
    events = await alice.subscribe(sid)
    first = await alice.send(sid, "one", "")
    second = await alice.send(sid, "two", "")
    third = await alice.send(sid, "three", "")
    waiting = await alice.cancel(sid, second.reply.id)
    assert (waiting.status, waiting.content) == ("cancelled", "")
    _, last = await until_ended(events, third.reply.id, timeout=15)
    assert last.status == "complete"
    history = {m.id: m for m in (await alice.messages(sid)).messages}
    assert (history[first.reply.id].status, history[first.reply.id].content) == ("complete", "slow")


async def test_retry_regenerates_in_place_and_conflicts_otherwise(chat, fake):
    alice, sid = chat
    fake.script(Fail(400))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "try me", "<d/>")
    _, failed = await until_ended(events, sent.reply.id)
    assert failed.status == "failed"
    fake.script(Reply(["second ", "time"], delay=0.05))
    calls = len(fake.requests)
    results = await asyncio.gather(alice.retry(sid, sent.reply.id), alice.retry(sid, sent.reply.id),
                                   return_exceptions=True)
    assert sum(isinstance(r, Conflict) for r in results) == 1
    again = next(r for r in results if not isinstance(r, BaseException))
    assert (again.id, again.seq, again.reply_to, again.status, again.content, again.error) == (
        failed.id, failed.seq, failed.reply_to, "pending", "", None)
    seen, done = await until_ended(events, sent.reply.id)
    assert done.content == "second time" == deltas_text(seen, sent.reply.id)
    assert len(fake.requests) == calls + 1
    with pytest.raises(Conflict):
        await alice.retry(sid, sent.reply.id)
    with pytest.raises(NotFound):
        await alice.retry(sid, sent.message.id)
    with pytest.raises(NotFound):
        await alice.cancel(sid, "nope")


async def test_without_an_api_key_replies_fail_clearly(settings, nats_server, fake, admin, user, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", "/nonexistent")
    keyless = msgspec.structs.replace(settings, run_assistant=True, model_base_url=fake.base_url)
    async with running(keyless, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        events = await alice.subscribe(sid)
        sent = await alice.send(sid, "hi", "")
        _, final = await until_ended(events, sent.reply.id)
    assert final.status == "failed" and final.error.code == "no_api_key"
    assert fake.requests == []


async def test_the_consumer_takes_the_configured_redelivery_settings(settings, nats_server, nc, fake, monkeypatch):
    """An existing durable consumer is updated, so changing DOCCHAT_REPLY_* takes effect on restart."""
    from nats.js.errors import NotFoundError

    from contracts.subjects import REPLY_STREAM

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    js = nc.jetstream()
    for ack_wait in (7.0, 3.0):
        custom = msgspec.structs.replace(settings, run_assistant=True, model_base_url=fake.base_url,
                                         reply_ack_wait_seconds=ack_wait, reply_max_deliver=4)
        async with running(custom, nats_server.url):
            for _ in range(50):
                with contextlib.suppress(NotFoundError):  # the consumer task may not have run yet
                    info = await js.consumer_info(REPLY_STREAM, "assistant")
                    if info.config.ack_wait == ack_wait:
                        break
                await asyncio.sleep(0.05)
        assert info.config.ack_wait == ack_wait and info.config.max_deliver == 4
        assert info.config.backoff == [ack_wait, ack_wait * 2, ack_wait * 4]
