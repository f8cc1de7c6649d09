"""Subject names of PROTOCOL.md: build them, parse them, and turn a JWT `sub` into a subject token."""

from __future__ import annotations

import hashlib
import re

PREFIX = "chat.u"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HASHED_RE = re.compile(r"^h[0-9a-f]{40}$")

SESSION_VERBS = ("send", "messages", "cancel", "retry")
USER_VERBS = ("getOrCreate", "byDocument")
GRANT = "chat.admin.documents.grant"
REVOKE = "chat.admin.documents.revoke"
USAGE = "chat.admin.usage"  # token usage report of one user (trusted services only)


def user_token(sub: str) -> str:
    """The `uid` subject token for a user's `sub` (PROTOCOL.md, Identities)."""
    if TOKEN_RE.match(sub) and not HASHED_RE.match(sub):
        return sub
    return "h" + hashlib.sha256(sub.encode()).hexdigest()[:40]


def is_token(value: str) -> bool:
    """True when value is a subject-safe id (session ids, message ids, uids)."""
    return bool(TOKEN_RE.match(value))


def user_subject(uid: str, verb: str) -> str:
    """`chat.u.{uid}.sessions.{verb}` for getOrCreate and byDocument."""
    return f"{PREFIX}.{uid}.sessions.{verb}"


def session_subject(uid: str, sid: str, verb: str) -> str:
    """`chat.u.{uid}.sessions.{sid}.{verb}` for send, messages, cancel, retry and events."""
    return f"{PREFIX}.{uid}.sessions.{sid}.{verb}"


def events_subject(uid: str, sid: str) -> str:
    """Where the service publishes a session's events."""
    return session_subject(uid, sid, "events")


# Partitions: the server maps each request subject to `chat.u.{uid}.p.{n}.sessions...` (nats.conf,
# `partition(64,1)`), so a request reaches the one host that owns partition n of that user.
PARTITIONS = 64


def partition_of(uid: str) -> int:
    """The user's partition: FNV-1a 32 of the uid mod PARTITIONS, as nats-server's partition() computes it."""
    h = 0x811C9DC5
    for byte in uid.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


def routed_user_subject(uid: str, verb: str) -> str:
    """The mapped form of `user_subject`: where the server delivers it."""
    return f"{PREFIX}.{uid}.p.{partition_of(uid)}.sessions.{verb}"


def user_endpoint(verb: str, partition: int | str = "*") -> str:
    """The wildcard subject one partition's service listens on for a user verb."""
    return f"{PREFIX}.*.p.{partition}.sessions.{verb}"


def session_endpoint(verb: str, partition: int | str = "*") -> str:
    """The wildcard subject one partition's service listens on for a session verb."""
    return f"{PREFIX}.*.p.{partition}.sessions.*.{verb}"


class NotRequestSubject(ValueError):
    """The subject is not one of PROTOCOL.md's request subjects in its mapped form."""


def parse(subject: str) -> tuple[str, int, str | None]:
    """(uid, partition, sid or None) from a mapped request subject; NotRequestSubject otherwise."""
    parts = subject.split(".")
    if len(parts) in (7, 8) and parts[:2] == ["chat", "u"] and parts[3] == "p" and parts[5] == "sessions":
        if parts[4].isdigit() and len(parts[4]) <= 3:
            return parts[2], int(parts[4]), (parts[6] if len(parts) == 8 else None)
    raise NotRequestSubject(f"not a docchat request subject: {subject!r}")


# Internal subjects: only the service's own processes use them (users get no permission here).
REPLY_STREAM = "DOCCHAT_REPLIES"
REPLY_PREFIX = "chat.internal.replies"


def reply_subject(sid: str) -> str:
    """Scheduled-reply work for one session (JetStream work queue)."""
    return f"{REPLY_PREFIX}.{sid}"


ACCESS_CHANGED = "chat.internal.access.changed"  # a grant or revoke: every host forgets its cached answer


def cancel_subject(message_id: str) -> str:
    """Where the assistant generating message_id listens for a cancel."""
    return f"chat.internal.cancel.{message_id}"
