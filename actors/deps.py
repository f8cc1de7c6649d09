"""What the request actors need, handed to them through their constructors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nats.aio.client import Client

from .access import Access
from .events import Events
from .ids import new_id, now_ms
from .limits import Limits
from .settings import Settings
from .store import Store


@dataclass(frozen=True, slots=True)
class Call:
    """One request for an actor: the caller's uid (from the subject) and the decoded body."""

    uid: str
    body: Any


@dataclass(frozen=True)
class Deps:
    """Collaborators of the session, user and admin actors."""

    nc: Client
    store: Store
    events: Events
    access: Access
    settings: Settings
    kick_relay: Callable[[], None] = lambda: None
    clock: Callable[[], int] = now_ms
    ids: Callable[[], str] = field(default=new_id)
    limits: Limits = field(default_factory=Limits)  # shared by every session actor: limits are per user
