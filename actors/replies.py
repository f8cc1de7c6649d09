"""Answer a request: a body on success; PROTOCOL.md's error headers and body on failure."""

from __future__ import annotations

from typing import Any

import structlog
from nats.micro.request import Request

from contracts.codec import encode
from contracts.errors import DocchatError, ErrorBody, NotOwner, error_body

log = structlog.get_logger("replies")


async def ok(request: Request, body: Any) -> None:
    """Send the encoded reply body."""
    await safely(request, encode(body), None)


async def fail(request: Request, exc: BaseException) -> None:
    """Send the error; anything that is not a DocchatError is a bug and says no more than that.

    NotOwner is not answered: the partition's new owner answers that request."""
    if isinstance(exc, NotOwner):
        log.info("request_left_to_owner", error=str(exc))
        return
    err = exc if isinstance(exc, DocchatError) else DocchatError()
    detail = error_body(err)
    text = " ".join(detail.message.split())  # a header value must stay on one line
    headers = {"Nats-Service-Error": text, "Nats-Service-Error-Code": str(detail.code)}
    await safely(request, encode(ErrorBody(error=detail)), headers)


async def safely(request: Request, data: bytes, headers: dict[str, str] | None) -> None:
    """Publish a reply; no reply subject or a closed connection is logged, never raised."""
    try:
        await request.respond(data, headers=headers)
    except Exception as exc:  # noqa: BLE001 - one lost reply must not stop the actor
        log.warning("reply_failed", error=str(exc))
