"""All configuration, read once from DOCCHAT_* environment variables into one frozen object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of a docchat process; see README "Configuration" for each variable."""

    # NATS. An empty nats_url means: start our own nats-server from nats.conf.
    nats_url: str = ""
    nats_user: str = "docchat"
    service_password: str = "docchat-dev"
    nats_host: str = "127.0.0.1"
    nats_port: int = 4222
    nats_ws_port: int = 8080
    nats_http_port: int = 8222
    data_dir: str = "data"
    db_path: str = ""  # default: {data_dir}/docchat.db
    sqlite_inline_writes: bool = True  # group commits on the event loop thread while the write lock is free
    sqlite_inline: bool = False  # reads on the event loop thread too, instead of aiosqlite's threads
    store_url: str = ""  # empty: SQLite at db_path; postgresql://user@host:port/db: the shared PostgreSQL store

    # Scale-out (PostgreSQL store only): partition leases of this host, and JetStream replicas.
    host_id: str = ""  # default: hostname-pid; unique per running host
    lease_seconds: float = 3.0  # a partition lease lasts this long unless renewed
    lease_renew_seconds: float = 1.0  # how often leases are renewed and membership looked at
    stream_replicas: int = 1  # replicas of the scheduled-reply stream: 3 on a 3-node cluster

    # Session actors.
    mailbox_size: int = 64
    idle_seconds: float = 60.0
    max_sessions_active: int = 100_000

    # Document access: "grants" (embedded table, admin subjects) or "service" (ask over NATS).
    access_mode: str = "grants"
    documents_subject: str = "documents.access"
    access_cache_seconds: float = 5.0
    access_timeout_seconds: float = 2.0

    # Assistant.
    run_assistant: bool = True
    model: str = "claude-sonnet-4-5"
    model_provider: str = "anthropic"  # or "offline": deterministic replies, no network
    max_tokens: int = 1024
    model_timeout_seconds: float = 60.0
    model_stall_seconds: float = 20.0
    model_retries: int = 3
    model_base_url: str = ""  # empty: ANTHROPIC_BASE_URL or the public API; key: ANTHROPIC_API_KEY
    model_backoff_seconds: float = 0.5  # first retry's delay; doubles per retry, with jitter
    model_backoff_max_seconds: float = 8.0  # cap; a longer retry-after is not waited for
    offline_delay_seconds: float = 0.0  # pause before each offline-model chunk (load tests)
    system_prompt: str = (
        "You are a helpful assistant inside a document editor. Answer questions about the "
        "document below, concisely."
    )
    replies_in_flight: int = 16
    reply_ack_wait_seconds: float = 30.0
    reply_max_deliver: int = 5
    reply_lease_seconds: float = 15.0  # a worker holds a reply this long without renewing
    stuck_reply_seconds: float = 30.0  # an unclaimed reply older than this is scheduled again
    reply_max_attempts: int = 3  # claims of one reply before it fails with a timeout error
    delta_interval_ms: int = 50

    # Gateway (auth callout).
    run_callout: bool = True
    jwt_secret: str = ""  # HS256 shared secret; dev default is set by `docchat serve`
    jwt_public_key: str = ""  # PEM for RS256/ES256
    jwt_issuer: str = ""
    jwt_audience: str = ""
    callout_password: str = "docchat-callout-dev"
    callout_seed: str = ""  # account nkey seed (SA...); default: made once in {data_dir}/callout.nk
    callout_xkey_seed: str = ""  # xkey seed (SX...) sealing callout requests; default {data_dir}/callout.xk
    web_port: int = 8090

    log_level: str = "info"

    # Limits. Per user, on send; 0 turns each off (the dev default; see README "Production settings").
    send_rate_per_second: float = 0.0  # sends a user may make per second, sustained
    send_burst: int = 20  # sends a user may make at once before the rate applies
    replies_in_flight_per_user: int = 0  # a user with this many unfinished replies gets 429 on send

    @property
    def database(self) -> Path:
        return Path(self.db_path) if self.db_path else Path(self.data_dir) / "docchat.db"


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from DOCCHAT_<FIELD> variables (upper case), then keyword overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for name in Settings.__struct_fields__:
        value = env.get("DOCCHAT_" + name.upper())
        if value is not None:
            raw[name] = value
    raw.update(overrides)
    return msgspec.convert(raw, Settings, strict=False)
