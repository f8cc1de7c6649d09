"""The `docchat` micro services: subject → decode → the right actor's mailbox. Handlers never await work.

Each partition a host owns has its own service (actors/ownership); the admin subjects have one per host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable

import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from contracts.barrier import flushed, let_go
from contracts.codec import decode_request
from contracts.errors import BadRequest, NotFound, NotOwner, TooLarge
from contracts.requests import (ByDocument, Cancel, GetOrCreate, GetUsage, Grant, ListMessages, Retry, Revoke,
                                Send)
from contracts.subjects import (GRANT, REVOKE, USAGE, is_token, parse, partition_of, session_endpoint,
                               user_endpoint)

from . import replies
from .deps import Call
from .runtime.directory import Directory
from .runtime.mailbox import Envelope
from .sessions.rules import check_document_id, check_send

log = structlog.get_logger("endpoints")

MAX_SEND_BODY = 2 * 1024 * 1024 + 32768 * 12 + 4096  # 2 MiB document plus escaped content
MAX_SMALL_BODY = 64 * 1024


@dataclass(frozen=True)
class Route:
    """How one endpoint turns a request into an envelope: body type, checks, and whose mailbox."""

    body: type
    directory: Directory
    owner: str  # "session", "user" or "admin": which actor's key the request goes to
    max_body: int = MAX_SMALL_BODY
    check: Callable[[Any], None] | None = None


def check_document(body: Any) -> None:
    """The documentId check of the bodies that carry one."""
    check_document_id(body.document_id)


def partition_routes(partition: int, sessions: Directory, users: Directory) -> dict[str, tuple[str, Route]]:
    """The six request endpoints of one partition (subjects as the server maps them)."""
    return {
        "getOrCreate": (user_endpoint("getOrCreate", partition),
                        Route(GetOrCreate, users, "user", check=check_document)),
        "byDocument": (user_endpoint("byDocument", partition), Route(ByDocument, users, "user", check=check_document)),
        "send": (session_endpoint("send", partition), Route(Send, sessions, "session", MAX_SEND_BODY, check_send)),
        "messages": (session_endpoint("messages", partition), Route(ListMessages, sessions, "session")),
        "cancel": (session_endpoint("cancel", partition), Route(Cancel, sessions, "session")),
        "retry": (session_endpoint("retry", partition), Route(Retry, sessions, "session")),
    }


def admin_routes(admin: Directory) -> dict[str, tuple[str, Route]]:
    """Grants, revokes and usage reports: any host answers them."""
    return {
        "grant": (GRANT, Route(Grant, admin, "admin", check=check_document)),
        "revoke": (REVOKE, Route(Revoke, admin, "admin", check=check_document)),
        "usage": (USAGE, Route(GetUsage, admin, "admin")),
    }


class Endpoints:
    """One `docchat` micro service over some routes; `async with` starts it, exit stops it."""

    def __init__(self, nc: Client, routes: dict[str, tuple[str, Route]], description: str,
                 queue_group: str | None = None, owned: Callable[[], bool] | None = None) -> None:
        self.nc = nc
        self.owned = owned  # False: this host may have lost the partition; leave requests to the owner
        self.routes = routes
        self.description = description
        self.queue_group = queue_group  # None: micro's shared default
        self.service: Service | None = None

    async def start(self, flush: bool = True) -> None:
        self.service = await add_service(self.nc, name="docchat", version=version("docchat"),
                                         description=self.description)
        for name, (subject, route) in self.routes.items():
            await self.service.add_endpoint(name=name, subject=subject, handler=self.handler(name, route),
                                            queue_group=self.queue_group)
        if flush:
            await flushed(self.nc)  # the server knows every subscription before we say we are ready

    async def stop(self) -> None:
        """Stop answering; requests the server routed here before it knew are still answered."""
        if self.service is not None:
            service, self.service = self.service, None
            await drain_endpoints(service)
            await service.stop()

    async def __aenter__(self) -> "Endpoints":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def handler(self, name: str, route: Route) -> Callable[[Request], Any]:
        async def handle(request: Request) -> None:
            try:
                if self.owned is not None and not self.owned():
                    raise NotOwner("this host's lease on the partition may have run out")
                key, envelope = self.envelope(request, route)
                route.directory.deliver(key, envelope)
            except Exception as exc:  # noqa: BLE001 - every caller gets PROTOCOL.md's error body
                if not isinstance(exc, (BadRequest, NotFound, TooLarge, NotOwner)):
                    log.info("request_refused", endpoint=name, error=str(exc))
                await replies.fail(request, exc)

        return handle

    @staticmethod
    def envelope(request: Request, route: Route) -> tuple[str, Envelope]:
        """(actor key, envelope) for a request, or raise the error to answer."""
        if len(request.data) > route.max_body:
            raise TooLarge("request body is too large")
        uid, sid = "", None
        if route.owner != "admin":
            uid, partition, sid = parse(request.subject)
            if not is_token(uid):
                raise BadRequest("the user token in the subject is not valid")
            if partition != partition_of(uid):  # published to a mapped subject by hand
                raise BadRequest("the partition in the subject is not the user's")
        if sid is not None and not is_token(sid):
            raise NotFound("no such session")
        body = decode_request(request.data, route.body)
        if route.check:
            route.check(body)
        key = {"session": sid, "user": uid, "admin": "admin"}[route.owner]
        return key or "", Envelope(Call(uid, body), request)


async def drain_endpoints(service: Service) -> None:
    """Drain the service's endpoint subscriptions (micro's own stop only unsubscribes them, which drops
    the requests the server routed here before it saw the UNSUB: their callers time out)."""
    endpoints, service._endpoints = service._endpoints, []  # noqa: SLF001 - micro has no drain of its own
    await asyncio.gather(*(let_go(e._subscription) for e in endpoints if e._subscription is not None))  # noqa: SLF001
