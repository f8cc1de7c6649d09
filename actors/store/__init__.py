"""Storage behind one small interface: SQLite now, PostgreSQL next."""

from .base import Claim, NewSend, OutboxItem, ReplyContext, SessionState, Store
from .sqlite import SqliteStore

__all__ = ["Claim", "NewSend", "OutboxItem", "ReplyContext", "SessionState", "SqliteStore", "Store"]
