"""Publish a session's events on chat.u.{uid}.sessions.{sid}.events."""

from __future__ import annotations

from nats.aio.client import Client

from contracts.codec import encode
from contracts.events import AnyEvent
from contracts.subjects import events_subject


class Events:
    """Encodes and publishes events; callers publish in the order clients must see them."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def publish(self, uid: str, sid: str, event: AnyEvent) -> None:
        await self.nc.publish(events_subject(uid, sid), encode(event))
