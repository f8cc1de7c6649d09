"""The scheduled-reply work item: what the session actor queues and the assistant consumes."""

from __future__ import annotations

import msgspec


class ScheduledReply(msgspec.Struct, frozen=True, rename="camel"):
    """Generate assistant message `message_id` of session `session_id` (owned by user `uid`)."""

    session_id: str
    message_id: str
    uid: str


encode_work = msgspec.json.Encoder().encode
decode_work = msgspec.json.Decoder(ScheduledReply).decode
