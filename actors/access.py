"""Who may use which document: the embedded grants table, or a documents service asked over NATS."""

from __future__ import annotations

import time
from typing import Protocol

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.codec import encode
from contracts.errors import Forbidden, Unavailable
from contracts.subjects import ACCESS_CHANGED

from .store import Store


class Access(Protocol):
    """Raises Forbidden unless the user (by uid) may use the document."""

    async def check(self, uid: str, document_id: str) -> None: ...

    def forget(self, uid: str, document_id: str) -> None:
        """Drop what is remembered of this pair (a grant or revoke just happened here)."""


class GrantsAccess:
    """Access while a grant exists in the store (chat.admin.documents.grant / revoke).

    A found grant is remembered for `cache_seconds`; a grant or revoke takes effect at once on every
    host, which hears of it on ACCESS_CHANGED (`listen_for_changes`).
    """

    MAX_CACHED = 100_000

    def __init__(self, store: Store, cache_seconds: float = 5.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.granted: dict[tuple[str, str], float] = {}

    async def check(self, uid: str, document_id: str) -> None:
        key = (uid, document_id)
        if self.granted.get(key, 0.0) > time.monotonic():
            return
        if not await self.store.has_grant(uid, document_id):
            raise Forbidden("no access to this document")
        if len(self.granted) >= self.MAX_CACHED:
            self.granted.clear()
        self.granted[key] = time.monotonic() + self.cache_seconds

    def forget(self, uid: str, document_id: str) -> None:
        self.granted.pop((uid, document_id), None)


class AccessQuestion(msgspec.Struct, frozen=True, rename="camel"):
    """What the documents service is asked: may this user use this document?"""

    document_id: str
    user_id: str
    uid: str


class AccessAnswer(msgspec.Struct, frozen=True, rename="camel"):
    allowed: bool


class ServiceAccess:
    """Ask a documents service over NATS request-reply, remembering answers for a few seconds."""

    MAX_CACHED = 100_000

    def __init__(self, nc: Client, store: Store, subject: str, cache_seconds: float, timeout: float) -> None:
        self.nc, self.store, self.subject = nc, store, subject
        self.cache_seconds, self.timeout = cache_seconds, timeout
        self.cache: dict[tuple[str, str], tuple[bool, float]] = {}
        self.decoder = msgspec.json.Decoder(AccessAnswer)

    async def check(self, uid: str, document_id: str) -> None:
        key = (uid, document_id)
        hit = self.cache.get(key)
        now = time.monotonic()
        if hit is None or hit[1] < now:
            allowed = await self.ask(uid, document_id)
            if len(self.cache) >= self.MAX_CACHED:
                self.cache.clear()
            self.cache[key] = (allowed, now + self.cache_seconds)
        else:
            allowed = hit[0]
        if not allowed:
            raise Forbidden("no access to this document")

    def forget(self, uid: str, document_id: str) -> None:
        self.cache.pop((uid, document_id), None)

    async def ask(self, uid: str, document_id: str) -> bool:
        sub = await self.store.user_sub(uid)
        question = encode(AccessQuestion(document_id=document_id, user_id=sub, uid=uid))
        try:
            msg = await self.nc.request(self.subject, question, timeout=self.timeout)
            return self.decoder.decode(msg.data).allowed
        except (nats.errors.Error, msgspec.DecodeError, TimeoutError) as exc:
            raise Unavailable("documents service unavailable, retry") from exc


class AccessChanged(msgspec.Struct, frozen=True, rename="camel"):
    """Published on ACCESS_CHANGED after a grant or revoke commits."""

    uid: str
    document_id: str


changed_decoder = msgspec.json.Decoder(AccessChanged)


async def announce_change(nc: Client, uid: str, document_id: str) -> None:
    """Tell every host to forget what it remembers of this (user, document)."""
    await nc.publish(ACCESS_CHANGED, encode(AccessChanged(uid=uid, document_id=document_id)))


async def listen_for_changes(nc: Client, access: Access) -> Subscription:
    """Forget cached answers that any host's grant or revoke changed; unsubscribe to stop."""
    async def on_change(msg: Msg) -> None:
        try:
            change = changed_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        access.forget(change.uid, change.document_id)

    return await nc.subscribe(ACCESS_CHANGED, cb=on_change)
