"""The scheduled-reply work item: what the session actor queues and the assistant consumes.

The relay sends the outbox to JetStream in batches: one message carries every reply scheduled
since the last publish (a JSON array of work items; the sweeper still sends single objects).
"""

from __future__ import annotations

import msgspec

from contracts.subjects import REPLY_PREFIX


class ScheduledReply(msgspec.Struct, frozen=True, rename="camel"):
    """Generate assistant message `message_id` of session `session_id` (owned by user `uid`)."""

    session_id: str
    message_id: str
    uid: str


BATCH_SUBJECT = f"{REPLY_PREFIX}.batch"  # where batches of more than one work item go
encode_work = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ScheduledReply | list[ScheduledReply]).decode


def decode_work(data: bytes) -> list[ScheduledReply]:
    """The work items of one JetStream message: a single item or a batch."""
    work = _decode(data)
    return work if isinstance(work, list) else [work]


def batch_payload(payloads: list[bytes]) -> bytes:
    """One message body for many encoded work items."""
    return b"[" + b",".join(payloads) + b"]"
