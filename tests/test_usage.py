"""`chat.admin.usage`: the model's own token counts summed per user over a time range."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from contracts.client import DocchatClient
from contracts.errors import BadRequest
from contracts.subjects import USAGE, user_token
from gateway.permissions import for_user
from tests.fakeapi import Fail, Reply
from tests.test_assistant import assistant_settings, fake, service, until_ended  # noqa: F401 - fixtures

CAROL = "carol@example.com"  # a sub that is not subject-safe: its uid is hashed


async def test_usage_sums_the_models_token_counts_over_a_time_range(service, fake, admin, nc):
    await admin.grant("doc", CAROL)
    await admin.grant("doc", "dave")
    carol, dave = DocchatClient(nc, CAROL), DocchatClient(nc, "dave")
    sid = (await carol.get_or_create("doc")).session.id
    events = await carol.subscribe(sid)
    fake.script(Reply(["one"], input_tokens=100, output_tokens=10), Fail(400),
                Reply(["three"], input_tokens=200, output_tokens=20))
    finals = []
    for text in ("first", "second", "third"):
        sent = await carol.send(sid, text, "")
        finals.append((await until_ended(events, sent.reply.id))[1])
        await asyncio.sleep(0.005)  # distinct updatedAt milliseconds
    assert [f.status for f in finals] == ["complete", "failed", "complete"]
    first, _, third = finals

    dave_sid = (await dave.get_or_create("doc")).session.id
    dave_events = await dave.subscribe(dave_sid)
    fake.script(Reply(["hi"], input_tokens=7, output_tokens=3))
    sent = await dave.send(dave_sid, "hello", "")
    await until_ended(dave_events, sent.reply.id)

    everything = await admin.usage(CAROL)
    assert (everything.user_id, everything.input_tokens, everything.output_tokens, everything.replies) == (
        CAROL, 300, 30, 2)  # the failed reply has no usage; dave's is his own
    assert (await admin.usage(CAROL, to_ms=third.updated_at)).input_tokens == 100  # toMs is exclusive
    late = await admin.usage(CAROL, from_ms=third.updated_at)
    assert (late.input_tokens, late.output_tokens, late.replies) == (200, 20, 1)
    early = await admin.usage(CAROL, from_ms=first.updated_at, to_ms=first.updated_at + 1)
    assert (early.input_tokens, early.output_tokens, early.replies) == (100, 10, 1)
    assert (await admin.usage("dave")).output_tokens == 3
    nobody = await admin.usage("nobody")
    assert (nobody.input_tokens, nobody.output_tokens, nobody.replies) == (0, 0, 0)


async def test_usage_reply_on_the_wire_and_bad_requests(service, admin, nc):
    msg = await nc.request(USAGE, b'{"userId": "erin", "fromMs": 0, "toMs": 1}')
    assert msgspec.json.decode(msg.data) == {"userId": "erin", "inputTokens": 0, "outputTokens": 0, "replies": 0}
    for bad in (b"{}", b'{"userId": "erin", "fromMs": -1}', b'{"userId": "erin", "toMs": "soon"}'):
        msg = await nc.request(USAGE, bad)
        assert msg.headers["Nats-Service-Error-Code"] == "400"
    with pytest.raises(BadRequest):
        await admin.usage("")


def test_users_may_not_reach_admin_subjects():
    allowed = for_user(user_token(CAROL))
    assert not any(s.startswith("chat.admin") or s.startswith(">") for s in allowed.publish + allowed.subscribe)
