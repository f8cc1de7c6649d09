"""getOrCreate and byDocument: one session per (user, document), created exactly once, access checked."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import Forbidden


async def test_concurrent_get_or_create_returns_one_session_and_one_created(host, admin, user):
    await admin.grant("doc-1", "alice")
    alice = user("alice")
    replies = await asyncio.gather(*(alice.get_or_create("doc-1") for _ in range(20)))
    assert len({r.session.id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1
    session = replies[0].session
    assert (session.document_id, session.user_id, session.message_count) == ("doc-1", "alice", 0)


async def test_concurrent_get_or_create_from_two_connections(host, admin, nats_server):
    """Calls spread over separate connections (as separate services would make) still agree."""
    import nats

    from contracts.client import DocchatClient
    from tests.conftest import SERVICE_PASSWORD

    await admin.grant("doc-shared", "bob")
    conns = [await nats.connect(nats_server.url, user="docchat", password=SERVICE_PASSWORD) for _ in range(4)]
    try:
        replies = await asyncio.gather(*(DocchatClient(c, "bob").get_or_create("doc-shared")
                                         for c in conns for _ in range(5)))
    finally:
        for c in conns:
            await c.close()
    assert len({r.session.id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1


async def test_each_document_and_each_user_gets_its_own_session(host, admin, user):
    for sub, doc in [("alice", "a"), ("alice", "b"), ("bob", "a")]:
        await admin.grant(doc, sub)
    ids = {(await user(s).get_or_create(d)).session.id for s, d in [("alice", "a"), ("alice", "b"), ("bob", "a")]}
    assert len(ids) == 3


async def test_by_document_is_null_until_created(host, admin, user):
    await admin.grant("doc-2", "carol")
    carol = user("carol")
    assert await carol.by_document("doc-2") is None
    created = (await carol.get_or_create("doc-2")).session
    assert await carol.by_document("doc-2") == created


async def test_no_grant_is_forbidden_and_revoke_takes_access_away(host, admin, user):
    dave = user("dave")
    with pytest.raises(Forbidden):
        await dave.get_or_create("doc-3")
    with pytest.raises(Forbidden):
        await dave.by_document("doc-3")
    await admin.grant("doc-3", "dave", role="viewer")
    session = (await dave.get_or_create("doc-3")).session
    await admin.revoke("doc-3", "dave")
    with pytest.raises(Forbidden):
        await dave.get_or_create("doc-3")
    with pytest.raises(Forbidden):
        await dave.send(session.id, "hello?", "<doc/>")


async def test_a_sub_that_is_not_subject_safe_is_hashed_and_keeps_its_sub(host, admin, user):
    sub = "erin@example.com"
    await admin.grant("doc-4", sub)
    erin = user(sub)
    assert erin.uid.startswith("h") and len(erin.uid) == 41
    session = (await erin.get_or_create("doc-4")).session
    assert session.user_id == sub


async def test_unicode_document_ids_are_accepted(host, admin, user):
    doc = "Résumé 📄 " + "x" * 200
    await admin.grant(doc, "frank")
    session = (await user("frank").get_or_create(doc)).session
    assert session.document_id == doc
