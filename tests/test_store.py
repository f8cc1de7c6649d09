"""The SQLite store on its own: the JSON it makes for `messages` equals the wire types exactly."""

from __future__ import annotations

import json

import msgspec
import pytest

from actors.store import NewSend, SqliteStore
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
