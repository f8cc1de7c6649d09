"""Request and reply bodies of the request-reply subjects (PROTOCOL.md, Bodies)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .models import Message, Session, Wire

MAX_CONTENT_CHARS = 32768
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
MAX_DOCUMENT_ID_CHARS = 256

DocumentId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DOCUMENT_ID_CHARS)]
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Request(Wire):
    """Base of request bodies; unknown fields are ignored."""


class GetOrCreate(Request):
    document_id: DocumentId


class ByDocument(Request):
    document_id: DocumentId


class Send(Request):
    content: str
    document_xml: str
    client_message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class ListMessages(Request):
    after_seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100


class Cancel(Request):
    message_id: str


class Retry(Request):
    message_id: str


class Grant(Request):
    document_id: DocumentId
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    role: Literal["owner", "editor", "viewer"] = "editor"


class Revoke(Request):
    document_id: DocumentId
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    role: Literal["owner", "editor", "viewer"] = "editor"


class GetUsage(Request):
    """`chat.admin.usage`: a user's (`sub`) token usage, over updatedAt in [fromMs, toMs); default all time."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    from_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    to_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None


class UsageReply(Wire, omit_defaults=False):
    """Sums of the model's own token counts over the user's assistant messages that carry usage."""

    user_id: str
    input_tokens: int
    output_tokens: int
    replies: int


class SessionReply(Wire, omit_defaults=False):
    session: Session
    created: bool


class MaybeSessionReply(Wire, omit_defaults=False):
    session: Session | None


class SendReply(Wire):
    message: Message
    reply: Message


class MessagesReply(Wire, omit_defaults=False):
    messages: list[Message]
    has_more: bool


class MessageReply(Wire):
    message: Message


class OkReply(Wire, omit_defaults=False):
    ok: bool = True
