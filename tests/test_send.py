"""send and messages: durable, strictly ordered, idempotent, with events in seq order."""

from __future__ import annotations

import asyncio

import pytest

from actors.sessions.actor import KEPT_BYTES
from actors.store import open_store
from contracts.errors import Forbidden, NotFound
from contracts.events import MessageEvent
from contracts.subjects import REPLY_STREAM


@pytest.fixture
async def session(host, admin, user):
    await admin.grant("doc", "alice")
    return (await user("alice").get_or_create("doc")).session


async def test_send_stores_user_message_and_pending_reply(session, user):
    alice = user("alice")
    reply = await alice.send(session.id, "What is this document about?", "<doc>hi</doc>")
    assert (reply.message.seq, reply.message.role, reply.message.status) == (1, "user", "complete")
    assert reply.message.content == "What is this document about?"
    assert (reply.reply.seq, reply.reply.role, reply.reply.status) == (2, "assistant", "pending")
    assert reply.reply.reply_to == reply.message.id and reply.reply.content == ""
    page = await alice.messages(session.id)
    assert page.messages == [reply.message, reply.reply] and page.has_more is False
    assert (await alice.get_or_create("doc")).session.message_count == 2


async def test_fifty_concurrent_senders_get_gapless_seq_and_ordered_events(session, user):
    alice = user("alice")
    events = await alice.subscribe(session.id)
    replies = await asyncio.gather(*(alice.send(session.id, f"message {i}", "<d/>") for i in range(50)))
    seqs = sorted(s for r in replies for s in (r.message.seq, r.reply.seq))
    assert seqs == list(range(1, 101))
    for r in replies:
        assert r.reply.seq == r.message.seq + 1
    seen = [await events.next() for _ in range(100)]
    await events.close()
    assert all(isinstance(e, MessageEvent) for e in seen)
    assert [e.message.seq for e in seen] == list(range(1, 101))
    stored = (await alice.messages(session.id, limit=500)).messages
    assert [m.seq for m in stored] == list(range(1, 101))


async def test_messages_pages_by_after_seq_and_limit(session, user):
    alice = user("alice")
    for i in range(5):
        await alice.send(session.id, f"m{i}", "")
    first = await alice.messages(session.id, limit=4)
    assert [m.seq for m in first.messages] == [1, 2, 3, 4] and first.has_more
    rest = await alice.messages(session.id, after_seq=4, limit=4)
    assert [m.seq for m in rest.messages] == [5, 6, 7, 8] and rest.has_more
    last = await alice.messages(session.id, after_seq=8)
    assert [m.seq for m in last.messages] == [9, 10] and not last.has_more


async def test_repeated_client_message_id_returns_first_reply_and_stores_nothing(session, user):
    alice = user("alice")
    first = await alice.send(session.id, "once", "<d/>", client_message_id="c-1")
    again = await asyncio.gather(*(alice.send(session.id, "once", "<d/>", client_message_id="c-1") for _ in range(5)))
    assert all(a == first for a in again)
    assert len((await alice.messages(session.id)).messages) == 2
    other = await alice.send(session.id, "twice", "<d/>", client_message_id="c-2")
    assert other.message.seq == 3


async def test_send_schedules_one_reply_in_jetstream(session, user, host, nc):
    alice = user("alice")
    js = nc.jetstream()
    before = (await js.stream_info(REPLY_STREAM)).state.messages
    await alice.send(session.id, "schedule me", "<d/>")
    for _ in range(50):
        if (await js.stream_info(REPLY_STREAM)).state.messages == before + 1:
            break
        await asyncio.sleep(0.05)
    assert (await js.stream_info(REPLY_STREAM)).state.messages == before + 1
    for _ in range(50):  # the relay deletes the row after JetStream's ack, in its own commit
        if not await host.store.outbox_pending(10):
            break
        await asyncio.sleep(0.02)
    assert await host.store.outbox_pending(10) == []


async def test_someone_elses_session_is_forbidden_and_unknown_is_not_found(session, admin, user):
    await admin.grant("doc", "mallory")
    mallory = user("mallory")
    with pytest.raises(Forbidden):
        await mallory.send(session.id, "hi", "")
    with pytest.raises(Forbidden):
        await mallory.messages(session.id)
    with pytest.raises(NotFound):
        await mallory.send("no-such-session", "hi", "")
    assert (await user("alice").messages(session.id)).messages == []


async def test_history_survives_a_restart(settings, nats_server, admin, user):
    from actors.host import running

    async with running(settings, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        sent = [await alice.send(sid, f"m{i}", "<d/>") for i in range(3)]
        before = (await alice.messages(sid)).messages
    async with running(settings, nats_server.url):
        after = (await alice.messages(sid)).messages
        assert after == before and len(after) == 6
        assert (await alice.get_or_create("doc")).session.id == sid
        nxt = await alice.send(sid, "after restart", "<d/>")
        assert nxt.message.seq == 7
        assert sent[0].message in after


async def test_idle_session_is_passivated_and_reactivated(settings, nats_server, admin, user):
    import msgspec

    from actors.host import running

    quick = msgspec.structs.replace(settings, idle_seconds=0.1)
    async with running(quick, nats_server.url) as h:
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        await alice.send(sid, "one", "")
        sessions = h.ownership.of_user("alice").sessions
        assert sid in sessions.live
        for _ in range(50):
            if sid not in sessions.live:
                break
            await asyncio.sleep(0.02)
        assert sid not in sessions.live
        second = await alice.send(sid, "two", "")
        assert second.message.seq == 3
        assert sessions.activations == 2


async def test_a_page_read_again_shows_what_changed_since_and_a_remembered_page_follows_new_sends(session, user, host):
    """Pages of complete messages are remembered by the session actor: they must still say hasMore
    right after new sends, and a page with an unfinished reply must never be served stale."""
    alice = user("alice")
    sent = [await alice.send(session.id, f"m{i}", "") for i in range(2)]
    before = await alice.messages(session.id, limit=4)
    assert [m.status for m in before.messages] == ["complete", "pending"] * 2
    for s in sent:
        await host.store.finish_reply(s.reply.id, None, "complete", f"answer to {s.message.content}", 5)
    after = await alice.messages(session.id, limit=4)
    assert [m.status for m in after.messages] == ["complete"] * 4 and not after.has_more
    assert after.messages[1].content == "answer to m0"
    again = await alice.messages(session.id, limit=4)
    assert again == after
    third = await alice.send(session.id, "m2", "")
    grown = await alice.messages(session.id, limit=4)
    assert grown.messages == after.messages and grown.has_more
    tail = await alice.messages(session.id, after_seq=4, limit=4)
    assert tail.messages == [third.message, third.reply] and not tail.has_more


async def test_a_page_read_again_shows_what_another_process_wrote_meanwhile(session, user, settings):
    """The session actor remembers pages; a reply that an assistant in another process claims,
    streams and ends (here: a second store on the same database) shows on the next read."""
    alice = user("alice")
    sent = await alice.send(session.id, "hello", "<d/>")

    async def last():
        return (await alice.messages(session.id)).messages[-1]

    assert ((await last()).status, (await last()).content) == ("pending", "")
    async with open_store(settings) as other:
        assert (await other.claim_reply(sent.reply.id, "elsewhere", 10, 60_000, 3)).state == "claimed"
        assert (await last()).updated_at == 10
        await other.save_progress(sent.reply.id, "elsewhere", "half", 11, 60_000)
        assert ((await last()).status, (await last()).content) == ("streaming", "half")
        await other.finish_reply(sent.reply.id, "elsewhere", "complete", "half and whole", 12, model="m")
    done = await last()
    assert (done.status, done.content, done.model) == ("complete", "half and whole", "m")


async def test_a_page_read_before_a_send_shows_the_new_messages_after_it(session, user):
    alice = user("alice")
    await alice.send(session.id, "one", "")
    assert [m.seq for m in (await alice.messages(session.id)).messages] == [1, 2]
    full = await alice.messages(session.id, limit=2)
    assert [m.seq for m in full.messages] == [1, 2] and not full.has_more
    await alice.send(session.id, "two", "")
    assert [m.content for m in (await alice.messages(session.id)).messages] == ["one", "", "two", ""]
    again = await alice.messages(session.id, limit=2)
    assert [m.seq for m in again.messages] == [1, 2] and again.has_more


async def test_a_session_keeps_a_bounded_amount_of_pages_and_they_stay_right(session, user, host):
    """Pages of large messages: the actor keeps at most KEPT_BYTES of them (a user cannot make it hold
    8 pages of 500 messages of 32k characters), and every read is still the whole, current page."""
    alice = user("alice")
    for i in range(12):
        await alice.send(session.id, f"{i:02d}" + "x" * 30_000, "")
    actor = host.ownership.of_user("alice").sessions.live[session.id]
    for _ in range(2):
        for after in range(0, 8):
            page = await alice.messages(session.id, after_seq=after, limit=500)
            assert [m.seq for m in page.messages] == list(range(after + 1, 25))
            assert [m.content[:2] for m in page.messages if m.role == "user"] == [
                f"{i:02d}" for i in range(12) if 2 * i + 1 > after]
        kept = sum(len(p.messages) for p in actor.pages.values())
        assert kept <= KEPT_BYTES and len(actor.pages) < 8
