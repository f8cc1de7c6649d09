"""Hostile input at every endpoint (property-based): never a 500, nothing stored when refused, never down."""

from __future__ import annotations

import asyncio
import json

import msgspec
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from contracts.subjects import GRANT, REVOKE, session_subject, user_subject

ODD_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from([
    "\u202eevil\u202c", "a\u0000b", "\ufeff", "\U0001F600" * 300, "\u200f\u200e", "x" * 70_000, " ", "\\ud800",
    "ﷺ" * 10, "\u0301" * 50,
])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=12)
FIELDS = ["documentId", "content", "documentXml", "clientMessageId", "afterSeq", "limit", "messageId", "userId",
          "role"]
# Bodies with the right keys and wrong, odd or huge values; plus raw JSON text made by hand.
SHAPED = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5).map(lambda d: json.dumps(d).encode())
HAND_MADE = st.sampled_from([
    b'{"content": "\\ud800", "documentXml": ""}',            # a lone surrogate, escaped
    b'{"content": "\\udfff\\ud800", "documentXml": "\\u0000"}',
    b'{"documentId": "\\ud83d"}',
    b'{"documentId": "doc\\u0000"}',
    b'{"content": "hi", "documentXml": "", "clientMessageId": "\\ud800"}',
    b'{"messageId": "\\ud800"}',
    b'{"afterSeq": 1e400}', b'{"limit": 99999999999999999999999}', b'{"afterSeq": -0}',
    b'{"content": "hi", "documentXml": "", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"documentId": ' + b"{" * 200 + b"}",
    b"[" * 100_000,
    b'{"a":1,"a":2}', b"", b"\x00", b"null", b"1", b'"x"', b"\xef\xbb\xbf{}", b"{}" * 1000,
])
# Well-formed bodies whose strings are odd: these reach the actors and the store.
VALIDISH = st.one_of(
    st.builds(lambda c, d: {"content": c, "documentXml": d}, ODD_TEXT, ODD_TEXT),
    st.builds(lambda c, k: {"content": c, "documentXml": "", "clientMessageId": k}, ODD_TEXT, ODD_TEXT),
    st.builds(lambda d: {"documentId": d}, ODD_TEXT),
    st.builds(lambda d, u: {"documentId": d, "userId": u}, ODD_TEXT, ODD_TEXT),
    st.builds(lambda m: {"messageId": m}, ODD_TEXT),
    st.builds(lambda a, n: {"afterSeq": a, "limit": n}, st.integers(-5, 2**64), st.integers(-5, 600)),
).map(lambda d: json.dumps(d).encode())
BODIES = st.binary(max_size=300) | SHAPED | HAND_MADE | VALIDISH
# Tokens a NATS client can publish to (no whitespace or control characters, which break the
# protocol line itself), but which are not valid docchat ids.
ODD_TOKENS = st.sampled_from(["*", ">", "x" * 65, "h" + "0" * 40, "$SYS", "é", "\u202e", "a$b", "-", "_"]) | st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="."),
    min_size=1, max_size=10)


@st.composite
def hostile_requests(draw, uid: str, sid: str) -> tuple[str, bytes]:
    """(subject, body): one of the eight endpoints, a good or odd uid/sid token, a hostile body."""
    endpoint = draw(st.sampled_from(["getOrCreate", "byDocument", "send", "messages", "cancel", "retry", "grant",
                                     "revoke"]))
    u = draw(st.just(uid) | ODD_TOKENS)
    s = draw(st.just(sid) | ODD_TOKENS)
    if endpoint in ("getOrCreate", "byDocument"):
        subject = user_subject(u, endpoint)
    elif endpoint in ("grant", "revoke"):
        subject = GRANT if endpoint == "grant" else REVOKE
    else:
        subject = session_subject(u, s, endpoint)
    return subject, draw(BODIES)


async def counts(host) -> tuple[int, ...]:
    """Rows in every table a request could change."""
    def read(db):
        # The outbox is emptied by the relay as it publishes: count the rows ever put in it instead.
        made = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return (*(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("sessions", "messages", "grants", "documents", "users")), made and made[0])
    return await host.store.read(read)


async def test_hostile_requests_never_get_a_500_store_nothing_when_refused_and_never_stop_the_service(
        host, admin, nc, user):
    await admin.grant("doc", "alice")
    alice = user("alice")
    sid = (await alice.get_or_create("doc")).session.id
    await alice.send(sid, "a first message", "<doc/>")
    loop = asyncio.get_running_loop()
    seen: dict[str, int] = {}

    async def probe(subject: str, body: bytes) -> None:
        before = await counts(host)
        try:
            msg = await nc.request(subject, body, timeout=5)
        except Exception as exc:  # noqa: BLE001 - only a subject nats itself refuses may fail here
            # (a wildcard token in a published subject matches no partition mapping: no responders)
            assert not subject.startswith("chat.") or " " in subject or not subject.isprintable() \
                or ".." in subject or subject.endswith(".") or {"*", ">"} & set(subject.split(".")), (subject, exc)
            return
        code = msg.headers.get("Nats-Service-Error-Code") if msg.headers else None
        seen[code or "ok"] = seen.get(code or "ok", 0) + 1
        assert code != "500", (subject, body[:200], msg.data[:300])
        reply = json.loads(msg.data)  # every reply is a JSON object
        assert isinstance(reply, dict)
        if code is not None:
            assert reply["error"]["code"] == int(code)
            assert await counts(host) == before, f"a refused request stored something: {subject} {body[:200]!r}"

    @hsettings(max_examples=200, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hostile_requests("alice", sid))
    def check(request: tuple[str, bytes]) -> None:
        asyncio.run_coroutine_threadsafe(probe(*request), loop).result(30)

    await asyncio.to_thread(check)
    # Still serving: a good request at the end answers as usual.
    sent = await alice.send(sid, "still there?", "<doc/>")
    history = (await alice.messages(sid, limit=500)).messages
    assert history[-2] == sent.message and sent.message.seq == history[-1].seq - 1
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    assert "ok" in seen and len(seen) > 2, seen  # the generator reached both accepted and refused paths


def test_error_body_shape_is_the_protocol_one():
    """Sanity of the helper above: a refused request's body decodes as PROTOCOL.md's error body."""
    from contracts.errors import BadRequest, ErrorBody, error_body

    body = msgspec.json.encode(ErrorBody(error=error_body(BadRequest("x"))))
    assert json.loads(body) == {"error": {"code": 400, "type": "bad_request", "message": "x"}}
