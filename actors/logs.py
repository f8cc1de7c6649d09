"""structlog set-up: one event per line, JSON unless stdout is a terminal."""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog


_encoder = msgspec.json.Encoder(enc_hook=repr)


def dumps(event: dict, **_: object) -> bytes:
    """JSON for one log event; values JSON cannot hold are written as their repr."""
    return _encoder.encode(event)


def configure(level: str = "info") -> None:
    """Configure structlog once for the process."""
    renderer: structlog.types.Processor
    if sys.stdout.isatty():
        renderer = structlog.dev.ConsoleRenderer()
        factory: structlog.types.WrappedLogger = structlog.PrintLoggerFactory()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=dumps)
        factory = structlog.BytesLoggerFactory()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if not sys.stdout.isatty() else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
