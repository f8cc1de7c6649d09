"""Per-user send limits: the token bucket with a fake clock, then 429s over real NATS."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from actors.host import running
from actors.limits import Limits, TokenBuckets
from contracts.codec import encode
from contracts.errors import RateLimited
from contracts.requests import Send
from contracts.subjects import session_subject


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_the_burst_then_says_how_long_to_wait():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("alice") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("alice") == 500  # one token every 0.5 s
    clock.now += 0.2
    assert buckets.take("alice") == 300
    clock.now += 0.3
    assert buckets.take("alice") == 0
    assert buckets.take("alice") == 500


def test_buckets_are_per_key():
    buckets = TokenBuckets(rate=1.0, burst=1, clock=FakeClock())
    assert buckets.take("alice") == 0
    assert buckets.take("alice") == 1000
    assert buckets.take("bob") == 0


def test_a_bucket_refills_no_higher_than_the_burst():
    clock = FakeClock()
    buckets = TokenBuckets(rate=10.0, burst=2, clock=clock)
    clock.now += 3600
    assert [buckets.take("alice") for _ in range(3)] == [0, 0, 100]


def test_a_wait_is_rounded_up_and_at_least_one_millisecond():
    clock = FakeClock()
    buckets = TokenBuckets(rate=3.0, burst=1, clock=clock)
    assert buckets.take("alice") == 0
    assert buckets.take("alice") == 334  # 1/3 s, rounded up: waiting that long always suffices
    clock.now += 0.333
    assert buckets.take("alice") == 1


def test_rate_zero_is_no_limit_and_keeps_nothing():
    buckets = TokenBuckets(rate=0.0, burst=1, clock=FakeClock())
    assert all(buckets.take("alice") == 0 for _ in range(1000))
    assert len(buckets) == 0


def test_idle_buckets_are_forgotten():
    clock = FakeClock()
    buckets = TokenBuckets(rate=10.0, burst=5, clock=clock)  # full again after 0.5 s
    for i in range(1000):
        buckets.take(f"user{i}")
    assert len(buckets) == 1000
    clock.now += 0.6
    buckets.take("active")
    assert len(buckets) == 1
    clock.now += 0.3
    buckets.take("active")
    assert len(buckets) == 1


def test_a_bucket_still_refilling_is_kept():
    clock = FakeClock()
    buckets = TokenBuckets(rate=1.0, burst=5, clock=clock)
    assert [buckets.take("alice") for _ in range(5)] == [0] * 5
    clock.now += 5.0  # a sweep is due; alice's bucket is full again, so forgetting it loses nothing
    buckets.take("bob")
    assert "alice" not in buckets.buckets
    for _ in range(5):
        buckets.take("carol")
    clock.now += 4.0  # carol is still refilling: she keeps her state through the next sweep
    clock.now += 1.0
    buckets.take("bob")
    assert buckets.take("carol") == 0


def test_the_in_flight_cap():
    assert not Limits(replies_in_flight=0).over_in_flight(10_000)
    limits = Limits(replies_in_flight=2)
    assert not limits.over_in_flight(1)
    assert limits.over_in_flight(2) and limits.over_in_flight(3)


@pytest.fixture
def limited(settings):
    return msgspec.structs.replace(settings, send_rate_per_second=1.0, send_burst=3)


async def test_a_burst_over_the_limit_gets_429_and_stores_only_what_was_allowed(limited, nats_server, admin, user, nc):
    async with running(limited, nats_server.url):
        for doc in ("doc-1", "doc-2"):
            await admin.grant(doc, "alice")
            await admin.grant(doc, "bob")
        alice, bob = user("alice"), user("bob")
        sids = [(await alice.get_or_create(doc)).session.id for doc in ("doc-1", "doc-2")]
        # Six sends at once over two sessions: the limit is per user, not per session.
        results = await asyncio.gather(*(alice.send(sids[i % 2], f"m{i}", "") for i in range(6)),
                                       return_exceptions=True)
        limited_errors = [r for r in results if isinstance(r, RateLimited)]
        assert len(limited_errors) == 3 and sum(not isinstance(r, BaseException) for r in results) == 3
        assert all(0 < e.retry_after_ms <= 1000 for e in limited_errors)

        stored = [m for sid in sids for m in (await alice.messages(sid)).messages]
        assert sum(m.role == "user" for m in stored) == 3 and len(stored) == 6  # nothing of a refused send

        # The wire: 429 headers and retryAfterMs in the error body.
        raw = await nc.request(session_subject(alice.uid, sids[0], "send"), encode(Send(content="x", document_xml="")))
        assert raw.headers["Nats-Service-Error-Code"] == "429"
        detail = msgspec.json.decode(raw.data)["error"]
        assert detail["type"] == "rate_limited" and detail["retryAfterMs"] > 0

        # Another user is not affected.
        bob_sid = (await bob.get_or_create("doc-1")).session.id
        for i in range(3):
            await bob.send(bob_sid, f"b{i}", "")

        # Waiting what the 429 said is enough for the next send.
        with pytest.raises(RateLimited) as refused:
            await alice.send(sids[0], "too soon", "")
        await asyncio.sleep(refused.value.retry_after_ms / 1000)
        sent = await alice.send(sids[0], "after waiting", "")
        assert sent.message.content == "after waiting"


async def test_a_repeated_client_message_id_is_answered_even_when_over_the_limit(limited, nats_server, admin, user):
    async with running(limited, nats_server.url):
        await admin.grant("doc", "alice")
        alice = user("alice")
        sid = (await alice.get_or_create("doc")).session.id
        first = await alice.send(sid, "once", "", client_message_id="c1")
        for i in range(2):
            await alice.send(sid, f"m{i}", "")
        assert (await alice.send(sid, "once", "", client_message_id="c1")) == first  # stores nothing, so no 429
        with pytest.raises(RateLimited):
            await alice.send(sid, "new", "", client_message_id="c2")


async def test_replies_in_flight_are_capped_per_user(settings, nats_server, admin, user):
    # No assistant runs here, so every reply stays pending until cancelled.
    capped = msgspec.structs.replace(settings, replies_in_flight_per_user=2)
    async with running(capped, nats_server.url):
        for doc in ("doc-1", "doc-2"):
            await admin.grant(doc, "alice")
        await admin.grant("doc-1", "bob")
        alice, bob = user("alice"), user("bob")
        s1, s2 = [(await alice.get_or_create(doc)).session.id for doc in ("doc-1", "doc-2")]
        first = await alice.send(s1, "one", "")
        await alice.send(s2, "two", "")
        with pytest.raises(RateLimited) as refused:
            await alice.send(s1, "three", "")
        assert refused.value.retry_after_ms > 0
        assert len((await alice.messages(s1)).messages) == 2

        bob_sid = (await bob.get_or_create("doc-1")).session.id
        await bob.send(bob_sid, "bob is not alice", "")

        assert (await alice.cancel(s1, first.reply.id)).status == "cancelled"  # one fewer in flight
        await alice.send(s1, "three", "")
        with pytest.raises(RateLimited):
            await alice.send(s2, "four", "")
