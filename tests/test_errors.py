"""Bad input gets PROTOCOL.md's error (headers and body), stores nothing, and hurts nobody else."""

from __future__ import annotations

import asyncio
import contextlib
import json

import msgspec
import nats.errors
import pytest

from contracts.subjects import partition_of, session_subject, user_subject


@pytest.fixture
async def session(host, admin, user):
    await admin.grant("doc", "alice")
    return (await user("alice").get_or_create("doc")).session


async def raw(nc, subject: str, data: bytes):
    """(code or None, decoded body, headers) of a raw request."""
    msg = await nc.request(subject, data, timeout=5)
    code = msg.headers.get("Nats-Service-Error-Code") if msg.headers else None
    return code, json.loads(msg.data), msg.headers


BAD_SENDS = [
    (b"not json", "400"),
    (b"[1, 2]", "400"),
    (b'"a string"', "400"),
    (b"{}", "400"),
    (b'{"content": 5, "documentXml": ""}', "400"),
    (b'{"content": "hi"}', "400"),
    (b'{"content": "   ", "documentXml": ""}', "400"),
    (b'{"content": "", "documentXml": ""}', "400"),
    (b'{"content": "hi", "documentXml": null}', "400"),
    (b'{"content": "hi", "documentXml": "", "clientMessageId": 7}', "400"),
    (json.dumps({"content": "x" * 32769, "documentXml": ""}).encode(), "413"),
    (json.dumps({"content": "hi", "documentXml": "x" * (2 * 1024 * 1024 + 1)}).encode(), "413"),
    (json.dumps({"content": "hi", "documentXml": "é" * (1024 * 1024 + 1)}).encode(), "413"),
    (b"{" * 100_000, "400"),
    (b'{"content": "hi", "documentXml": "", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}", "400"),
    (b"\xff\xfe\x00garbage", "400"),
]


@pytest.mark.parametrize(("body", "code"), BAD_SENDS, ids=range(len(BAD_SENDS)))
async def test_bad_send_is_refused_with_the_protocol_error_and_stores_nothing(session, nc, user, body, code):
    got, reply, headers = await raw(nc, session_subject("alice", session.id, "send"), body)
    assert got == code
    assert reply["error"]["code"] == int(code)
    assert reply["error"]["type"] == {"400": "bad_request", "413": "too_large"}[code]
    assert headers["Nats-Service-Error"] == reply["error"]["message"]
    assert (await user("alice").messages(session.id)).messages == []


async def test_content_of_exactly_the_limits_is_accepted(session, user):
    alice = user("alice")
    reply = await alice.send(session.id, "y" * 32768, "é" * (1024 * 1024))
    assert len(reply.message.content) == 32768


@pytest.mark.parametrize("body", [b'{"documentId": ""}', b'{"documentId": 3}', b"{}", b"nope",
                                  json.dumps({"documentId": "a\u0000b"}).encode(),
                                  json.dumps({"documentId": "x" * 257}).encode()])
async def test_bad_get_or_create_is_refused(host, admin, nc, user, body):
    await admin.grant("doc", "alice")
    code, reply, _ = await raw(nc, user_subject("alice", "getOrCreate"), body)
    assert code in ("400", "413") and reply["error"]["code"] == int(code)
    assert await user("alice").by_document("doc") is None


@pytest.mark.parametrize("body", [b'{"afterSeq": -1}', b'{"limit": 0}', b'{"limit": 501}', b'{"limit": "5"}',
                                  b'{"afterSeq": 1.5}'])
async def test_bad_messages_request_is_a_400(session, nc, body):
    code, reply, _ = await raw(nc, session_subject("alice", session.id, "messages"), body)
    assert code == "400" and reply["error"]["type"] == "bad_request"


async def test_unknown_request_fields_are_ignored(session, nc):
    code, reply, _ = await raw(nc, session_subject("alice", session.id, "send"),
                               b'{"content": "hi", "documentXml": "", "colour": "blue"}')
    assert code is None and reply["message"]["content"] == "hi"


async def test_bad_subject_tokens(host, nc):
    code, reply, _ = await raw(nc, "chat.u.alice.sessions.no$such.send", b'{"content": "hi", "documentXml": ""}')
    assert code == "404" and reply["error"]["type"] == "not_found"
    code, reply, _ = await raw(nc, "chat.u.al$ce.sessions.getOrCreate", b'{"documentId": "d"}')
    assert code == "400"


async def test_a_flood_of_bad_requests_does_not_hurt_other_callers(session, nc, user):
    alice = user("alice")
    flood = [raw(nc, session_subject("alice", session.id, "send"), b"garbage") for _ in range(200)]
    good = [alice.send(session.id, f"ok {i}", "") for i in range(10)]
    results = await asyncio.gather(*flood, *good)
    assert all(r[0] == "400" for r in results[:200])
    assert sorted(r.message.seq for r in results[200:]) == list(range(1, 20, 2))


async def test_a_full_mailbox_answers_503_and_stores_nothing_for_it(settings, nats_server, admin, nc, user):
    from actors.host import running

    tight = msgspec.structs.replace(settings, mailbox_size=2)
    async with running(tight, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        results = await asyncio.gather(*(raw(nc, session_subject("alice", sid, "send"),
                                             json.dumps({"content": f"m{i}", "documentXml": "x" * 100_000}).encode())
                                         for i in range(40)))
        codes = [r[0] for r in results]
        assert "503" in codes
        assert set(codes) <= {None, "503"}
        ok = sum(c is None for c in codes)
        unavailable = [r[1]["error"] for r in results if r[0] == "503"]
        assert all(e["type"] == "unavailable" for e in unavailable)
        stored = (await alice.messages(sid, limit=500)).messages
        assert len(stored) == 2 * ok
        assert [m.seq for m in stored] == list(range(1, 2 * ok + 1))


async def test_a_request_to_another_users_partition_is_refused_and_stores_nothing(host, nc, admin, user):
    await admin.grant("doc", "alice")
    assert partition_of("alice") == 39
    code, reply, _ = await raw(nc, "chat.u.alice.p.5.sessions.getOrCreate", b'{"documentId": "doc"}')
    assert code == "400" and "partition" in reply["error"]["message"]
    assert await user("alice").by_document("doc") is None
    code, reply, _ = await raw(nc, "chat.u.alice.p.39.sessions.getOrCreate", b'{"documentId": "doc"}')
    assert code is None and reply["created"] is True  # the mapped form itself is fine


async def test_service_answers_ping_and_info(host, nc):
    ping = json.loads((await nc.request("$SRV.PING.docchat", b"", timeout=2)).data)
    assert ping["name"] == "docchat" and ping["version"] == "0.1.0"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO.docchat", b"", reply=inbox)
    infos = []
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            infos.append(json.loads((await sub.next_msg(timeout=0.5)).data))
    subjects = {e["subject"] for info in infos for e in info["endpoints"]}
    assert len(infos) == 65  # one service per partition, one for the admin subjects
    assert {"chat.u.*.p.39.sessions.*.send", "chat.u.*.p.0.sessions.getOrCreate",
            "chat.admin.documents.grant"} <= subjects
