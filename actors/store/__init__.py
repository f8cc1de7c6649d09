"""Storage behind one small interface: SQLite (embedded) or PostgreSQL (shared), chosen by settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Claim, LeaseStore, NewSend, OutboxItem, ReplyContext, SessionState, Store
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from actors.settings import Settings

    from .postgres import PostgresStore

__all__ = ["Claim", "LeaseStore", "NewSend", "OutboxItem", "ReplyContext", "SessionState", "SqliteStore", "Store", "open_store"]


def open_store(settings: "Settings") -> "SqliteStore | PostgresStore":
    """The store the settings name, not yet opened: `async with open_store(settings) as store`."""
    url = settings.store_url
    if not url:
        return SqliteStore(settings.database, inline=settings.sqlite_inline, inline_writes=settings.sqlite_inline_writes)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # asyncpg is imported only when it is used

        return PostgresStore(url)
    raise ValueError("DOCCHAT_STORE_URL must be empty (SQLite) or a postgresql:// URL")
