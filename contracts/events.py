"""Bodies published on `chat.u.{uid}.sessions.{sid}.events`, tagged by `type`."""

from __future__ import annotations

import msgspec

from .models import Message


class Event(msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag_field="type"):
    """Base of events."""


class MessageEvent(Event, tag="message"):
    """A message was stored or changed status."""

    message: Message


class DeltaEvent(Event, tag="delta"):
    """Assistant message `message_id` grew by `text`, starting at character `offset`."""

    message_id: str
    seq: int
    offset: int
    text: str


AnyEvent = MessageEvent | DeltaEvent
