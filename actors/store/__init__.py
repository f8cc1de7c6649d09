"""Storage behind one small interface: SQLite now, PostgreSQL next."""

from .base import NewSend, OutboxItem, SessionState, Store
from .sqlite import SqliteStore

__all__ = ["NewSend", "OutboxItem", "SessionState", "SqliteStore", "Store"]
