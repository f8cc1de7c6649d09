"""Document access asked of a documents service over NATS, and users admitted by the auth callout."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats
import pytest

from actors.host import running
from contracts.barrier import flushed
from contracts.client import DocchatClient
from contracts.errors import Forbidden, Unavailable
from contracts.subjects import user_token
from gateway.devtoken import mint
from tests.conftest import CALLOUT_PASSWORD

SECRET = "test-access-secret-long-enough-for-hs256-0123456789"


@pytest.fixture
def service_settings(settings, callout_keys):
    return msgspec.structs.replace(
        settings, access_mode="service", documents_subject="test.documents.access", access_cache_seconds=0.5,
        access_timeout_seconds=0.3, run_callout=True, jwt_secret=SECRET, callout_password=CALLOUT_PASSWORD,
        callout_seed=callout_keys.signer.seed, callout_xkey_seed=callout_keys.xkey.seed)


@pytest.fixture
async def documents(nc):
    """A documents service that allows what `allowed` holds and records what it was asked."""
    allowed: set[tuple[str, str]] = set()
    asked: list[dict] = []

    async def answer(msg):
        question = json.loads(msg.data)
        asked.append(question)
        await msg.respond(json.dumps({"allowed": (question["userId"], question["documentId"]) in allowed}).encode())

    sub = await nc.subscribe("test.documents.access", cb=answer)
    await flushed(nc)
    yield allowed, asked
    await sub.unsubscribe()


async def test_the_documents_service_decides_and_its_answer_is_cached_briefly(service_settings, nats_server,
                                                                              documents, user):
    allowed, asked = documents
    async with running(service_settings, nats_server.url):
        alice = user("alice")
        with pytest.raises(Forbidden):
            await alice.get_or_create("doc")
        allowed.add(("alice", "doc"))
        with pytest.raises(Forbidden):  # the "no" is remembered for access_cache_seconds
            await alice.get_or_create("doc")
        await asyncio.sleep(0.6)
        sid = (await alice.get_or_create("doc")).session.id
        await alice.send(sid, "hi", "")
        assert asked[-1] == {"documentId": "doc", "userId": "alice", "uid": "alice"}
        calls = len(asked)
        await alice.send(sid, "again", "")
        assert len(asked) == calls  # cached
        allowed.clear()
        await asyncio.sleep(0.6)
        with pytest.raises(Forbidden):
            await alice.send(sid, "after the service said no", "")
        assert len((await alice.messages(sid)).messages) == 4


async def test_no_documents_service_is_a_503_and_stores_nothing(service_settings, nats_server, user):
    async with running(service_settings, nats_server.url) as host:
        with pytest.raises(Unavailable):
            await user("bob").get_or_create("doc")
        assert await host.store.find_session("bob", "doc") is None


async def test_a_hashed_user_admitted_by_the_callout_keeps_its_sub(service_settings, nats_server, documents):
    allowed, asked = documents
    sub = "erin@example.com"
    uid = user_token(sub)
    allowed.add((sub, "doc"))
    async with running(service_settings, nats_server.url):
        conn = await nats.connect(nats_server.url, token=mint(SECRET, sub), inbox_prefix=f"_INBOX_{uid}")
        try:
            session = (await DocchatClient(conn, sub).get_or_create("doc")).session
        finally:
            await conn.close()
    assert session.user_id == sub
    assert asked[-1]["userId"] == sub and asked[-1]["uid"] == uid


async def test_a_revoke_made_by_another_host_takes_effect_at_once_here(settings, nats_server, nc, admin, user):
    from actors.access import announce_change

    cached = msgspec.structs.replace(settings, access_cache_seconds=60.0)
    async with running(cached, nats_server.url) as h:
        await admin.grant("doc", "alice")
        await admin.grant("doc", "bob")
        alice, bob = user("alice"), user("bob")
        a = (await alice.get_or_create("doc")).session.id
        b = (await bob.get_or_create("doc")).session.id
        await alice.send(a, "one")
        await bob.send(b, "one")
        # Another host sharing the store revokes: the rows go, this host only hears the announcement.
        await h.store.revoke("alice", "doc")
        await h.store.revoke("bob", "doc")
        await announce_change(nc, "alice", "doc")
        await flushed(nc)
        await asyncio.sleep(0.05)
        with pytest.raises(Forbidden):
            await alice.send(a, "two")
        await bob.send(b, "two")  # no announcement for bob: the remembered grant still holds (60 s)
