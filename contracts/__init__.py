"""docchat's wire contract: PROTOCOL.md as msgspec Structs, subjects, errors and a typed client."""

from .errors import (BadRequest, Conflict, DocchatError, Forbidden, NotFound, RateLimited, TooLarge,
                     Unavailable)
from .events import AnyEvent, DeltaEvent, MessageEvent
from .models import ErrorInfo, Message, Session, Usage
from .subjects import events_subject, session_subject, user_subject, user_token

__all__ = [
    "AnyEvent", "BadRequest", "Conflict", "DeltaEvent", "DocchatError", "ErrorInfo", "Forbidden",
    "Message", "MessageEvent", "NotFound", "RateLimited", "Session", "TooLarge", "Unavailable", "Usage",
    "events_subject", "session_subject", "user_subject", "user_token",
]
