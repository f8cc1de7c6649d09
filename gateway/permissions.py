"""What a user may do on NATS (PROTOCOL.md, Auth): pure, from the uid alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.subjects import PREFIX, SESSION_VERBS, USER_VERBS, is_token, session_subject, user_subject


@dataclass(frozen=True)
class UserPermissions:
    """Subjects a user may publish to and subscribe to; everything else is denied."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_claims(self) -> dict[str, Any]:
        """The `pub`/`sub` part of a NATS user JWT; no `resp`, so no allow_responses."""
        return {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)}}


def inbox_prefix(uid: str) -> str:
    """The reply inbox prefix a user's client must use: `_INBOX_{uid}`."""
    return f"_INBOX_{uid}"


def for_user(uid: str) -> UserPermissions:
    """The request subjects under `chat.u.{uid}.` (as sent and as mapped), its events and its own inbox."""
    if not is_token(uid):
        raise ValueError("uid is not a subject token")
    publish = [user_subject(uid, verb) for verb in USER_VERBS]
    publish += [session_subject(uid, "*", verb) for verb in SESSION_VERBS]
    # The server checks permissions on the subject after its partition mapping (nats.conf).
    publish += [f"{PREFIX}.{uid}.p.*.sessions.{verb}" for verb in USER_VERBS]
    publish += [f"{PREFIX}.{uid}.p.*.sessions.*.{verb}" for verb in SESSION_VERBS]
    subscribe = [session_subject(uid, "*", "events"), inbox_prefix(uid) + ".>"]
    return UserPermissions(tuple(publish), tuple(subscribe))
