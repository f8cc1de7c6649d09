"""The protocol tests again, on a host whose store is PostgreSQL (DOCCHAT_STORE_URL), plus the store alone.

pytest collects every test function in a module's namespace, so importing the SQLite-run tests here runs
them a second time; the `settings` fixture below (same name, so it wins in this module) gives each
test its own fresh database on one throwaway server. Left out: tests that read SQLite directly
(hostile input counts, storage faults) or start subprocesses with their own env (crash tests).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import msgspec
import pytest

from actors.settings import Settings
from actors.store import open_store
from actors.store.base import NewSend
from actors.store.postgres import PostgresStore
from contracts.errors import Unavailable
from contracts.models import Message
from actors.pgserver import PgServer, new_database
from tests.test_access import (  # noqa: F401 - tests and fixtures, run again here
    documents, service_settings, test_a_hashed_user_admitted_by_the_callout_keeps_its_sub,
    test_no_documents_service_is_a_503_and_stores_nothing,
    test_the_documents_service_decides_and_its_answer_is_cached_briefly)
from tests.test_assistant import *  # noqa: F401,F403 - every assistant test and its fixtures
from tests.test_errors import *  # noqa: F401,F403
from tests.test_limits import (  # noqa: F401
    limited, test_a_burst_over_the_limit_gets_429_and_stores_only_what_was_allowed,
    test_a_repeated_client_message_id_is_answered_even_when_over_the_limit,
    test_replies_in_flight_are_capped_per_user)
from tests.test_races import *  # noqa: F401,F403
from tests.test_send import *  # noqa: F401,F403
from tests.test_sessions import *  # noqa: F401,F403
from tests.test_store import check_messages_page
from tests.test_usage import (  # noqa: F401
    test_usage_reply_on_the_wire_and_bad_requests, test_usage_sums_the_models_token_counts_over_a_time_range)

@pytest.fixture
async def settings(settings: Settings, postgres: PgServer) -> Settings:
    """conftest's settings, with the store on a fresh PostgreSQL database."""
    return msgspec.structs.replace(settings, store_url=await new_database(postgres))


async def test_messages_page_json_is_what_the_wire_types_encode_on_postgres(settings):
    async with open_store(settings) as store:
        assert isinstance(store, PostgresStore)
        await check_messages_page(store)


async def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(settings):
    async with PostgresStore(settings.store_url) as store:
        async def bad(db):
            await db.execute("INSERT INTO users (uid, sub) VALUES ('x', NULL)")

        results = await asyncio.gather(store.remember_user("a", "sub-a"), store.write(bad),
                                       store.remember_user("b", "sub\u0000b"), return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], asyncpg.NotNullViolationError)
        assert (await store.user_sub("a"), await store.user_sub("b")) == ("sub-a", "sub\u0000b")


async def test_concurrent_get_or_create_on_two_stores_makes_one_session(settings):
    async with PostgresStore(settings.store_url) as one, PostgresStore(settings.store_url) as two:
        made = await asyncio.gather(*(s.get_or_create_session("alice", "doc\u0000", f"sid{i}-{n}", i)
                                      for i in range(20) for n, s in enumerate((one, two))))
        assert sum(created for _, created in made) == 1
        assert len({session.id for session, _ in made}) == 1 and made[0][0].document_id == "doc\u0000"


async def test_a_send_held_up_by_another_transactions_lock_answers_503_stores_nothing_then_works(
        settings, host, admin, user):
    await admin.grant("doc", "alice")
    alice = user("alice")
    sid = (await alice.get_or_create("doc")).session.id
    other = await asyncpg.connect(settings.store_url)
    try:
        locker = other.transaction()
        await locker.start()
        await other.execute("SELECT 1 FROM sessions WHERE id=$1 FOR UPDATE", sid)  # e.g. a frozen host's
        with pytest.raises(Unavailable):
            await alice.send(sid, "held up")  # waits lock_timeout (2 s), then 503: nothing stored
        await locker.rollback()
    finally:
        await other.close()
    assert (await alice.messages(sid)).messages == []
    sent = await alice.send(sid, "again")
    assert sent.message.seq == 1


async def test_a_database_that_is_gone_answers_unavailable():
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(OSError):
        await store.open()
    with pytest.raises(Unavailable):
        await store.get_message("m")


async def test_a_database_crash_answers_unavailable_then_the_store_recovers():
    with PgServer() as server:
        async with PostgresStore(server.url()) as store:
            await store.remember_user("a", "sub-a")
            await asyncio.to_thread(server.kill)
            with pytest.raises(Unavailable):
                await store.remember_user("b", "sub-b")
            with pytest.raises(Unavailable):
                await store.user_sub("a")
            await asyncio.to_thread(server.launch)
            await store.remember_user("c", "sub-c")  # the writer reconnects
            sub = None
            for _ in range(store.reader_count + 1):  # each broken pooled connection fails once, then is replaced
                with contextlib.suppress(Unavailable):
                    sub = await store.user_sub("c")
                    break
            assert sub == "sub-c"
            assert (await store.user_sub("a"), await store.user_sub("b")) == ("sub-a", "b")


async def test_a_reply_whose_row_is_held_past_the_lock_timeout_still_completes_without_starting_over(
        settings, chat, fake):
    """Another transaction (another host's claim, a stalled writer) holds the streaming reply's row for
    longer than the writer's lock_timeout: the progress save it blocks is skipped, not a crash that
    threw the reply away and cost it one of its attempts."""
    alice, sid = chat
    chunks = [f"w{i} " for i in range(8)]
    fake.script(Reply(chunks, delay=0.3))
    events = await alice.subscribe(sid)
    sent = await alice.send(sid, "slow one", "")
    seen = []
    while not any(isinstance(e, DeltaEvent) for e in seen):
        seen.append(await events.next(5))
    streaming_from = len(seen)  # the reply's pending event from the send came before this
    other = await asyncpg.connect(settings.store_url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM messages WHERE id=$1 FOR UPDATE", sent.reply.id)
            await asyncio.sleep(2.6)  # the writer gives up on a lock after 2 s
        more, final = await until_ended(events, sent.reply.id, timeout=15)
        attempts = await other.fetchval("SELECT attempts FROM messages WHERE id=$1", sent.reply.id)
    finally:
        await other.close()
    assert final.status == "complete" and final.content == "".join(chunks)
    seen += more
    restarts = [e for e in seen[streaming_from:] if isinstance(e, MessageEvent) and e.message.id == sent.reply.id
                and e.message.status == "pending"]
    assert restarts == [], "the reply started over"
    assert attempts == 1
    assert deltas_text(seen, sent.reply.id) == final.content


async def test_a_claim_on_a_reply_another_transaction_is_writing_answers_busy_without_waiting(settings):
    """Two hosts nudged about one reply: the second claim does not wait on the first one's row lock
    (which held its whole group commit, and could deadlock two hosts' batches): someone has it."""
    async with PostgresStore(settings.store_url) as store:
        await store.get_or_create_session("alice", "doc", "sid1", 1)
        user = Message(id="u1", session_id="sid1", seq=1, role="user", content="hi", status="complete",
                       created_at=1, updated_at=1)
        reply = Message(id="a1", session_id="sid1", seq=2, role="assistant", content="", status="pending",
                        created_at=1, updated_at=1, reply_to="u1")
        await store.append_send(NewSend(user=user, reply=reply, client_message_id=None, document_xml="<d/>",
                                        reply_subject="x", reply_payload=b"{}", dedup_id="d1"))
        other = await asyncpg.connect(settings.store_url)
        try:
            async with other.transaction():
                await other.execute("SELECT 1 FROM messages WHERE id='a1' FOR UPDATE")
                held = await store.claim_reply("a1", "t1", 2, 15_000, 3)
            free = await store.claim_reply("a1", "t2", 3, 15_000, 3)
        finally:
            await other.close()
        assert held.state == "busy"
        assert free.state == "claimed" and not free.restarted  # the busy answer took no attempt
        assert (await store.claim_reply("gone-id", "t3", 4, 15_000, 3)).state == "gone"
