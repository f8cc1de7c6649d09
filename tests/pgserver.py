"""Moved to actors/pgserver.py (the local cluster demo uses it too)."""

from actors.pgserver import PgServer, bin_dir, new_database  # noqa: F401
