"""The two records of PROTOCOL.md: Session and Message."""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["user", "assistant"]
Status = Literal["complete", "pending", "streaming", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"complete", "failed", "cancelled"})


class Wire(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Base of every wire type: frozen, camelCase keys, defaults left out."""


class Session(Wire, omit_defaults=False):
    """A user's one chat session about one document."""

    id: str
    document_id: str
    user_id: str
    created_at: int
    updated_at: int
    message_count: int


class ErrorInfo(Wire):
    """Why an assistant message failed."""

    code: str
    message: str


class Usage(Wire, omit_defaults=False):
    """The model's own token counts for one reply."""

    input_tokens: int
    output_tokens: int


class Message(Wire):
    """One message of a session, in `seq` order."""

    id: str
    session_id: str
    seq: int
    role: Role
    content: str
    status: Status
    created_at: int
    updated_at: int
    error: ErrorInfo | None = None
    reply_to: str | None = None
    model: str | None = None
    usage: Usage | None = None
