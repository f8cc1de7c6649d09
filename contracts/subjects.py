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


def user_endpoint(verb: str) -> str:
    """The wildcard subject the service listens on for a user verb."""
    return f"{PREFIX}.*.sessions.{verb}"


def session_endpoint(verb: str) -> str:
    """The wildcard subject the service listens on for a session verb."""
    return f"{PREFIX}.*.sessions.*.{verb}"


def parse(subject: str) -> tuple[str, str | None]:
    """(uid, sid or None) from a request subject; ValueError when it is not one."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[:2] == ["chat", "u"] and parts[3] == "sessions":
        return parts[2], None
    if len(parts) == 6 and parts[:2] == ["chat", "u"] and parts[3] == "sessions":
        return parts[2], parts[4]
    raise ValueError(f"not a docchat request subject: {subject!r}")


# Internal subjects: only the service's own processes use them (users get no permission here).
REPLY_STREAM = "DOCCHAT_REPLIES"
REPLY_PREFIX = "chat.internal.replies"


def reply_subject(sid: str) -> str:
    """Scheduled-reply work for one session (JetStream work queue)."""
    return f"{REPLY_PREFIX}.{sid}"


def cancel_subject(message_id: str) -> str:
    """Where the assistant generating message_id listens for a cancel."""
    return f"chat.internal.cancel.{message_id}"
