"""The auth callout against the real nats-server: who gets in, and what they may do once in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator

import jwt
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.transport import WebSocketTransport

from actors.natsserver import EmbeddedNats
from actors.settings import Settings
from contracts.barrier import flushed
from contracts.subjects import routed_user_subject, user_token
from gateway.callout import SUBJECT, XKEY_HEADER, AuthCallout
from gateway.devtoken import mint
from gateway.keys import CalloutKeys, server_env

# nats-py's websocket transport passes aiohttp a deprecated float timeout; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:parameter 'timeout':DeprecationWarning")

SECRET = "callout-test-secret-long-enough-for-hs256-0123456789"
CALLOUT_PASSWORD = "callout-test-password"


async def ignore_errors(exc: Exception) -> None:
    """Keeps nats-py from printing expected refusals as tracebacks."""


@pytest.fixture(scope="module")
def gw_keys() -> CalloutKeys:
    return CalloutKeys.create()


@pytest.fixture(scope="module")
async def gw_server(tmp_path_factory, gw_keys) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("gw-nats"),
                          extra_env=server_env(gw_keys, CALLOUT_PASSWORD))
    async with server:
        yield server


@pytest.fixture(scope="module")
async def gw_callout(gw_server, gw_keys) -> AsyncIterator[AuthCallout]:
    nc = await nats.connect(gw_server.url, user="callout", password=CALLOUT_PASSWORD, error_cb=ignore_errors)
    async with AuthCallout(nc, Settings(jwt_secret=SECRET), gw_keys) as callout:
        yield callout
    await nc.close()


@pytest.fixture(scope="module")
async def service(gw_server, gw_callout) -> AsyncIterator[Client]:
    """The trusted `docchat` service user, answering getOrCreate for any user with the subject."""
    nc = await nats.connect(gw_server.url, user="docchat", password=gw_server.service_password,
                            error_cb=ignore_errors)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await nc.subscribe("chat.u.*.p.*.sessions.getOrCreate", cb=echo)  # as the server maps it
    await flushed(nc)
    yield nc
    await nc.close()


class User:
    """A token user's connection plus the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    def violations(self, kind: str, subject: str) -> bool:
        return any(f"permissions violation for {kind} to \"{subject.lower()}\"" in e for e in self.errors)


async def connect_user(url: str, sub: str, ttl: float = 60.0, token: str | None = None) -> User:
    user = User()
    user.nc = await nats.connect(url, token=token or mint(SECRET, sub, ttl), inbox_prefix=f"_INBOX_{user_token(sub)}",
                                 allow_reconnect=False, connect_timeout=3, error_cb=user.on_error)
    return user


async def server_view(server: EmbeddedNats, nc: Client) -> dict:
    """The server's record of one connection (monitoring /connz): its messages and subscriptions."""
    url = f"http://{server.host}:{server.http_port}/connz?cid={nc.client_id}&subs=detail"

    def fetch() -> dict:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (our own local server)
            return json.load(resp)

    conns = (await asyncio.to_thread(fetch)).get("connections") or [{}]
    keep = ("in_msgs", "out_msgs", "pending_bytes", "subscriptions_list_detail", "reason")
    return {k: conns[0].get(k) for k in keep}


async def refusal(url: str, token: str | None) -> str | None:
    """The server's error when it refuses a token at connect (lower case), None when it admits it."""
    nc = Client()
    try:
        await nc.connect(url, token=token, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                         error_cb=ignore_errors)
    except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
        return str(exc).lower() or type(exc).__name__
    finally:
        # nats-py leaves a refused websocket's aiohttp session open; its finalizer, run later by
        # the GC in the middle of unrelated code, breaks CPython 3.11's ast module (SystemError).
        transport = nc._transport  # noqa: SLF001
        if isinstance(transport, WebSocketTransport) and not nc.is_connected:
            transport.close()
            with contextlib.suppress(Exception):
                await transport.wait_closed()
    await nc.close()
    return None


async def refused(url: str, token: str | None) -> bool:
    """True when the server refuses the token as an authorization violation."""
    return "authorization violation" in (await refusal(url, token) or "")


async def settle(*conns: Client) -> None:
    """Every publish and subscribe sent so far has been processed and delivered."""
    for nc in conns + conns:
        await flushed(nc)
    await asyncio.sleep(0.05)


async def arrived(got: list[Msg], count: int, timeout: float = 3.0) -> list[Msg]:
    """Waits until `count` messages are in `got` (a loaded CI machine can take longer than settle)."""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return got


@pytest.fixture
async def alice(gw_server, gw_callout) -> AsyncIterator[User]:
    user = await connect_user(gw_server.url, "alice")
    yield user
    await user.nc.close()


async def collect(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def keep(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=keep)
    await flushed(nc)
    return got


# who gets in

@pytest.mark.parametrize("token", [
    None, "", "garbage",
    jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "not-the-secret-not-the-secret-not-the", "HS256"),
    jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET, "HS256"),
    jwt.encode({"sub": "alice"}, SECRET, "HS256"),
], ids=["missing", "empty", "garbage", "bad-signature", "expired", "no-exp"])
async def test_a_bad_token_is_refused_at_connect(gw_server, gw_callout, token):
    assert await refused(gw_server.url, token)
    assert await refused(gw_server.ws_url, token)


async def test_the_service_and_callout_users_need_their_passwords(gw_server, gw_callout):
    for user in ("docchat", "callout"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(gw_server.url, user=user, password="wrong", allow_reconnect=False,
                               max_reconnect_attempts=0, connect_timeout=3, error_cb=ignore_errors)


async def test_the_service_user_uses_any_chat_subject(gw_server, service):
    got = await collect(service, "chat.>")
    for subject in ("chat.internal.replies.s1", "chat.u.bob.sessions.s1.events", "chat.admin.documents.grant"):
        await service.publish(subject, b"x")
    await settle(service)
    assert [m.subject for m in await arrived(got, 3)] == ["chat.internal.replies.s1", "chat.u.bob.sessions.s1.events",
                                        "chat.admin.documents.grant"]


async def test_a_users_request_reaches_the_service_and_the_reply_comes_back(alice, service):
    reply = await alice.nc.request("chat.u.alice.sessions.getOrCreate", b"{}", timeout=2)
    assert reply.data == routed_user_subject("alice", "getOrCreate").encode()
    assert alice.errors == []


async def test_a_sub_that_is_not_subject_safe_works_under_its_hashed_uid(gw_server, service):
    uid = user_token("alice@example.com")
    user = await connect_user(gw_server.url, "alice@example.com")
    try:
        reply = await user.nc.request(f"chat.u.{uid}.sessions.getOrCreate", b"{}", timeout=2)
        assert reply.data == routed_user_subject(uid, "getOrCreate").encode()
    finally:
        await user.nc.close()


async def test_a_token_user_gets_in_over_websocket(gw_server, service):
    user = await connect_user(gw_server.ws_url, "carol")
    try:
        reply = await user.nc.request("chat.u.carol.sessions.getOrCreate", b"{}", timeout=2)
        assert reply.data == routed_user_subject("carol", "getOrCreate").encode()
    finally:
        await user.nc.close()


async def test_the_connection_closes_when_the_token_expires(gw_server, gw_callout):
    user = await connect_user(gw_server.url, "dave", ttl=2)
    started = time.monotonic()
    while not user.nc.is_closed and time.monotonic() - started < 5:
        await asyncio.sleep(0.05)
    assert user.nc.is_closed
    assert "expired" in str(user.nc.last_error).lower()


async def test_requests_are_sealed_so_only_the_callout_reads_tokens(gw_server, gw_callout):
    spy = await nats.connect(gw_server.url, user="callout", password=CALLOUT_PASSWORD, error_cb=ignore_errors)
    try:
        seen = await collect(spy, SUBJECT)
        token = mint(SECRET, "erin", 60)
        user = await connect_user(gw_server.url, "erin", token=token)
        await user.nc.close()
        await settle(spy)
        await arrived(seen, 1)
        assert seen and seen[0].headers and seen[0].headers.get(XKEY_HEADER, "").startswith("X")
        assert seen[0].data.startswith(b"xkv1") and token.encode() not in seen[0].data
    finally:
        await spy.close()


# what a user may do once in

async def test_a_user_cannot_publish_to_other_users_or_internal_subjects(alice, service):
    got = await collect(service, "chat.>")
    denied = ["chat.u.bob.sessions.getOrCreate", "chat.u.bob.sessions.s1.send", "chat.u.bob.sessions.s1.cancel",
              "chat.u.alice.sessions.s1.events", "chat.internal.replies.s1", "chat.admin.documents.grant",
              "$SRV.PING", "_INBOX_bob.x"]
    for subject in denied:
        await alice.nc.publish(subject, b"x")
    await settle(alice.nc, service)
    assert got == []
    # The server reports a request subject as its partition mapping rewrote it (bob is partition 20).
    mapped = {"chat.u.bob.sessions.getOrCreate": "chat.u.bob.p.20.sessions.getOrCreate",
              "chat.u.bob.sessions.s1.send": "chat.u.bob.p.20.sessions.s1.send",
              "chat.u.bob.sessions.s1.cancel": "chat.u.bob.p.20.sessions.s1.cancel"}
    for subject in denied:
        assert alice.violations("publish", mapped.get(subject, subject)), subject


async def test_a_user_cannot_subscribe_beyond_its_events_and_inbox(gw_server, alice, service):
    denied = ["chat.u.bob.sessions.s1.events", "_INBOX_bob.>", "_INBOX.>", "chat.>", "chat.u.*.sessions.*.events",
              "chat.u.alice.sessions.getOrCreate", ">"]
    got = [await collect(alice.nc, subject) for subject in denied]
    allowed = await collect(alice.nc, "chat.u.alice.sessions.*.events")
    for subject in ("chat.u.bob.sessions.s1.events", "_INBOX_bob.x", "_INBOX.x", "chat.internal.replies.s1",
                    "chat.u.alice.sessions.s1.events"):
        await service.publish(subject, b"x")
    await settle(service, alice.nc)
    # The allowed message is published last: once it is in, the denied ones had their chance.
    # It never arrived twice in CI while collect() trusted nc.flush(), whose PING overtakes the SUB
    # (contracts/barrier.py); should it happen again, the failure says what each side saw.
    if not await arrived(allowed, 1):
        seen = {"server": await server_view(gw_server, alice.nc), "client": alice.nc.stats,
                "connected": alice.nc.is_connected, "errors": alice.errors}
        pytest.fail(f"the allowed event did not arrive: {seen}")
    assert [m.subject for m in allowed] == ["chat.u.alice.sessions.s1.events"]
    await settle(service, alice.nc)
    assert all(g == [] for g in got)
    for subject in denied:
        assert alice.violations("subscription", subject), subject


async def test_a_user_cannot_answer_a_request_it_receives(alice, service):
    """No allow_responses: a reply subject handed to the user grants nothing."""
    got = await collect(service, "chat.internal.>")
    inbox = await collect(alice.nc, "_INBOX_alice.probe")
    await service.publish("_INBOX_alice.probe", b"x", reply="chat.internal.trap")
    await settle(service, alice.nc)
    assert len(await arrived(inbox, 1)) == 1
    await inbox[0].respond(b"answer")
    await settle(alice.nc, service)
    assert got == [] and alice.violations("publish", "chat.internal.trap")


async def test_token_users_are_refused_while_no_callout_answers(tmp_path, gw_keys):
    """The server waits auth_timeout for an answer, then refuses; the service user never waits."""
    async with EmbeddedNats(store_dir=tmp_path, extra_env=server_env(gw_keys, CALLOUT_PASSWORD)) as server:
        nc = await nats.connect(server.url, user="docchat", password=server.service_password)
        await nc.close()
        # Refused either by the callout wait or by the client's own auth timer (both 2 s).
        error = await refusal(server.url, mint(SECRET, "alice", 60))
        assert error and ("authorization violation" in error or "authentication timeout" in error)
