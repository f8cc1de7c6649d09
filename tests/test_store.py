"""The SQLite store on its own: the JSON it makes for `messages` equals the wire types exactly."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import msgspec
import pytest

from actors.store import NewSend, SqliteStore
from actors.store import rows
from actors.store.sqlite import SCHEMA
from contracts.codec import encode
from contracts.models import Message

ODD = ["plain", "quote \" and backslash \\", "tab\tnewline\n", "emoji 📄 and RTL \u202e", "nul \u0000 byte",
       "<doc attr='x'>&amp;</doc>", "ünïcödé " * 50]


@pytest.mark.parametrize("inline", [False, True], ids=["aiosqlite-thread", "inline"])
async def test_messages_page_json_is_what_the_wire_types_encode(tmp_path, inline):
    async with SqliteStore(tmp_path / "s.db", inline=inline) as store:
        await check_messages_page(store)


async def check_messages_page(store) -> None:
    """On any store: odd texts, a finished and a failed reply; the page equals the wire encoding."""
    session, _ = await store.get_or_create_session("alice", "doc", "sid1", 1000)
    for i, text in enumerate(ODD):
        user = Message(id=f"u{i}", session_id="sid1", seq=2 * i + 1, role="user", content=text,
                       status="complete", created_at=i, updated_at=i)
        reply = Message(id=f"a{i}", session_id="sid1", seq=2 * i + 2, role="assistant", content="",
                        status="pending", created_at=i, updated_at=i, reply_to=user.id)
        await store.append_send(NewSend(user=user, reply=reply, client_message_id=None, document_xml=text,
                                        reply_subject="x", reply_payload=b"{}", dedup_id=f"d{i}"))
    await store.finish_reply("a0", None, "complete", "answer " + ODD[1], 5, model="m", usage=(10, 20))
    await store.finish_reply("a1", None, "failed", "", 6, error=("model_timeout", "too slow"))
    expected, more = await store.list_messages("sid1", 0, 100)
    page = await store.messages_page("sid1", 0, 100)
    assert not more and not page.has_more
    assert msgspec.json.decode(page.messages, type=list[Message]) == expected
    assert json.loads(bytes(page.messages)) == json.loads(encode(expected))  # same keys: nulls left out
    assert "error" not in json.loads(bytes(page.messages))[0] and json.loads(bytes(page.messages))[1]["usage"] == {
        "inputTokens": 10, "outputTokens": 20}
    first = await store.messages_page("sid1", 2, 3)
    assert [m["seq"] for m in json.loads(bytes(first.messages))] == [3, 4, 5] and first.has_more
    empty = await store.messages_page("sid1", 14, 3)
    assert json.loads(bytes(empty.messages)) == [] and not empty.has_more


async def one_send(store, n: int, document_xml: str = "<d/>") -> tuple[str, str]:
    """A send of session sid1 (made if needed): (user message id, reply id)."""
    await store.get_or_create_session("alice", "doc", "sid1", 1000)
    user = Message(id=f"u{n}", session_id="sid1", seq=2 * n + 1, role="user", content=f"q{n}",
                   status="complete", created_at=n, updated_at=n)
    reply = Message(id=f"a{n}", session_id="sid1", seq=2 * n + 2, role="assistant", content="",
                    status="pending", created_at=n, updated_at=n, reply_to=user.id)
    await store.append_send(NewSend(user=user, reply=reply, client_message_id=None, document_xml=document_xml,
                                    reply_subject="x", reply_payload=b"{}", dedup_id=f"d{n}"))
    return user.id, reply.id


async def test_a_page_key_holds_until_a_message_on_the_page_changes(tmp_path):
    """Every change a reader could see (claim, progress, end, cancel, retry) breaks the key; giving a
    claim up does not; a page of complete messages has nothing that could change."""
    async with SqliteStore(tmp_path / "s.db") as store:
        _, a0 = await one_send(store, 0)
        _, a1 = await one_send(store, 1)
        page = await store.messages_page("sid1", 0, 100)
        assert not page.complete and len(json.loads(page.key.rowids)) == 2 and page.key.revs == 0

        async def after(change) -> list[dict] | None:
            """Run change, then read with the last key: None when the store says the page is unchanged."""
            nonlocal page
            await change()
            again = await store.messages_page("sid1", 0, 100, page.key)
            if again.messages is None:
                assert again.key == page.key
                return None
            page = again
            return json.loads(bytes(again.messages))

        assert await after(lambda: asyncio.sleep(0)) is None
        assert (await after(lambda: store.claim_reply(a0, "t", 10, 60_000, 3)))[1]["status"] == "pending"
        assert await after(lambda: store.release_reply(a0, "t")) is None
        assert (await after(lambda: store.claim_reply(a0, "t2", 11, 60_000, 3)))[1]["updatedAt"] == 11
        assert (await after(lambda: store.save_progress(a0, "t2", "par", 12, 60_000)))[1]["content"] == "par"
        assert (await after(lambda: store.save_progress(a0, "t2", "part", 12, 60_000)))[1]["content"] == "part"
        assert (await after(lambda: store.finish_reply(a0, "t2", "complete", "partly", 13)))[1]["status"] == "complete"
        assert await after(lambda: asyncio.sleep(0)) is None
        assert (await after(lambda: store.finish_reply(a1, None, "cancelled", "", 14)))[3]["status"] == "cancelled"
        assert (await after(lambda: store.retry_reply(a1, 15, "x", b"{}", "d9")))[3]["status"] == "pending"
        assert (await after(lambda: store.finish_reply(a1, None, "complete", "done", 16)))[3]["content"] == "done"
        assert page.complete and page.key.rowids == "[]"
        await one_send(store, 2)
        page = await store.messages_page("sid1", 0, 100)
        assert await after(lambda: asyncio.sleep(0)) is None
        vacuum = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        vacuum.execute("VACUUM")  # may renumber rowids, so no key read before it holds after it
        vacuum.close()
        assert len(await after(lambda: asyncio.sleep(0))) == 6


async def test_a_file_from_before_page_keys_opens_and_works(tmp_path):
    """A database written by a docchat without messages.rev gets the column on open, keeping its data."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("\n".join(line for line in SCHEMA.splitlines() if not line.lstrip().startswith("rev ")))
    assert "rev" not in {row[1] for row in old.execute("PRAGMA table_info(messages)")}
    user = Message(id="u0", session_id="sid1", seq=1, role="user", content="q0", status="complete",
                   created_at=1, updated_at=1)
    reply = Message(id="a0", session_id="sid1", seq=2, role="assistant", content="", status="pending",
                    created_at=1, updated_at=1, reply_to="u0")
    old.execute("BEGIN")
    rows.get_or_create_session(old, "alice", "doc", "sid1", 1)
    rows.append_send(old, NewSend(user=user, reply=reply, client_message_id=None, document_xml="<d/>",
                                  reply_subject="x", reply_payload=b"{}", dedup_id="d0"))
    old.execute("COMMIT")
    old.close()
    a0 = reply.id
    async with SqliteStore(path) as store:
        page = await store.messages_page("sid1", 0, 100)
        assert (await store.claim_reply(a0, "t", 10, 60_000, 3)).state == "claimed"
        await store.finish_reply(a0, "t", "complete", "kept", 11)
        again = await store.messages_page("sid1", 0, 100, page.key)
        assert [m["content"] for m in json.loads(bytes(again.messages))] == ["q0", "kept"]


@pytest.mark.parametrize("inline_writes", [False, True], ids=["writer-thread", "inline-writes"])
async def test_a_write_waiting_for_another_process_lock_leaves_the_event_loop_free(tmp_path, inline_writes):
    """While another process holds the write lock, a send waits for it without stalling the service:
    timers fire, reads answer, and the send commits as soon as the lock is released."""
    path = tmp_path / "s.db"
    async with SqliteStore(path, inline_writes=inline_writes) as store:
        await one_send(store, 0)
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        try:
            send = asyncio.create_task(one_send(store, 1))
            last, longest = loop.time(), 0.0
            for _ in range(20):  # the lock is held for about a second
                await asyncio.sleep(0.05)
                longest, last = max(longest, loop.time() - last), loop.time()
            assert not send.done()
            assert (await store.load_session("sid1")).last_seq == 2  # reads answer meanwhile
        finally:
            other.execute("ROLLBACK")
            other.close()
        await asyncio.wait_for(send, 5)
        assert longest < 0.5, f"the event loop stalled {longest:.2f} s behind another process's lock"
        page = await store.messages_page("sid1", 0, 100)
        assert [m["seq"] for m in json.loads(bytes(page.messages))] == [1, 2, 3, 4]


async def test_sends_of_large_documents_commit_without_holding_the_event_loop(tmp_path):
    """Group commits run on the event loop, but not one writing MiBs: while 8 sends of a 2 MiB document
    each commit, timers keep firing."""
    async with SqliteStore(tmp_path / "s.db") as store:
        await one_send(store, 0)
        documents = {n: f"<doc n='{n}'>" + "x" * (2 * 1024 * 1024 - 20) + "</doc>" for n in range(1, 9)}
        loop = asyncio.get_running_loop()
        longest, done = 0.0, False

        async def ticker() -> None:
            nonlocal longest
            last = loop.time()
            while not done:
                await asyncio.sleep(0.001)
                longest, last = max(longest, loop.time() - last), loop.time()

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        await asyncio.gather(*(one_send(store, n, xml) for n, xml in documents.items()))
        done = True
        await ticking
        assert (await store.load_session("sid1")).last_seq == 18
        assert longest < 0.05, f"the event loop was held {longest * 1000:.0f} ms by a commit of large documents"
