"""The NATS auth callout (ADR-26, config mode): verify the connect token, answer a signed user JWT.

nats-server sends each connecting client's CONNECT to `$SYS.REQ.USER.AUTH` in the AUTH account
as an authorization-request JWT (sealed to our xkey); we reply with an authorization-response JWT
for the server's per-connection user nkey, holding either an error (the client is refused) or a
user JWT placing it in account APP with `permissions.for_user(uid)` until the token's `exp`.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.settings import Settings
from contracts.barrier import flushed, let_go

from . import natsjwt, permissions
from .keys import CalloutKeys
from .nkeycodec import SERVER
from .tokens import Claims, TokenError, TokenVerifier
from .xkeys import XKeyError

log = structlog.get_logger("gateway")

SUBJECT = "$SYS.REQ.USER.AUTH"
XKEY_HEADER = "Nats-Server-Xkey"
NO_LIMIT = -1


class AuthCallout:
    """`async with AuthCallout(nc, settings, keys)` answers auth requests until the block ends."""

    def __init__(self, nc: Client, settings: Settings, keys: CalloutKeys, account: str = "APP",
                 verifier: TokenVerifier | None = None,
                 on_admit: Callable[[Claims], Awaitable[None]] | None = None) -> None:
        self._nc = nc
        self._keys = keys
        self._account = account
        self._verifier = verifier or TokenVerifier.from_settings(settings)
        self._sub: Subscription | None = None
        # Told of each admitted user whose sub is hashed into its uid (the service keeps the sub).
        self._on_admit = on_admit
        self._admitted: list[Claims] = []

    async def start(self) -> None:
        """Subscribe to the callout subject (idempotent); flushes so the server knows before return."""
        if self._sub is None:
            # A queue group: with several hosts, one of them answers each connecting client.
            self._sub = await self._nc.subscribe(SUBJECT, queue="docchat-callout", cb=self._on_request)
            await flushed(self._nc)
            log.info("callout_started", account=self._account, issuer=self._keys.signer.public_key)

    async def stop(self) -> None:
        """Stop answering (idempotent); clients connecting afterwards go to another host's callout,
        or time out and are refused. Drained, so those the server already routed here are answered."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await let_go(sub)
            log.info("callout_stopped")

    async def __aenter__(self) -> "AuthCallout":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_request(self, msg: Msg) -> None:
        # Everything here is CPU-only and sub-millisecond, so answering inline (one request at a
        # time, as nats-py runs callbacks) is fine; never let an exception kill the subscription.
        try:
            reply = self.answer(msg.data, (msg.headers or {}).get(XKEY_HEADER))
        except Exception:
            log.exception("callout_failed")
            return
        for claims in self._admitted:  # before the reply: the user's first request may need it
            try:
                await self._on_admit(claims)
            except Exception:  # noqa: BLE001 - the user is admitted either way
                log.exception("callout_on_admit_failed")
        self._admitted.clear()
        if reply is not None and msg.reply:
            await self._nc.publish(msg.reply, reply)

    def answer(self, data: bytes, server_xkey: str | None) -> bytes | None:
        """The reply to one raw request (sealed when it was); None when it is not a valid request."""
        try:
            if server_xkey:
                data = self._keys.xkey.open(data, server_xkey)
            request = natsjwt.decode(data.decode(), SERVER)
        except (XKeyError, natsjwt.NatsJwtError, UnicodeDecodeError):
            log.warning("callout_bad_request")  # not from our server: nobody to answer
            return None
        nats = request.get("nats") or {}
        user_nkey = str(nats.get("user_nkey", ""))
        server_id = str((nats.get("server_id") or {}).get("id", ""))
        if nats.get("type") != "authorization_request" or request.get("iss") != server_id or not user_nkey:
            log.warning("callout_bad_request")
            return None
        token = (nats.get("connect_opts") or {}).get("auth_token")
        try:
            claims = self._verifier.verify(token if isinstance(token, str) else None)
        except TokenError as exc:
            log.info("callout_refused", reason=str(exc), client=_client(nats))
            body: dict[str, Any] = {"error": str(exc)}
        else:
            log.info("callout_granted", uid=claims.uid, exp=claims.exp, client=_client(nats))
            if self._on_admit is not None and claims.uid != claims.sub:
                self._admitted.append(claims)
            body = {"jwt": self.user_jwt(claims, user_nkey)}
        response = natsjwt.encode({
            "sub": user_nkey, "aud": server_id,
            "nats": {**body, "type": "authorization_response", "version": 2},
        }, self._keys.signer)
        return self._keys.xkey.seal(response.encode(), server_xkey) if server_xkey else response.encode()

    def user_jwt(self, claims: Claims, user_nkey: str) -> str:
        """The user JWT for a verified token: account APP, the user's permissions, the token's exp."""
        return natsjwt.encode({
            "sub": user_nkey, "aud": self._account, "name": claims.uid, "exp": claims.exp,
            "nats": {
                **permissions.for_user(claims.uid).to_claims(),
                "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
                "type": "user", "version": 2,
            },
        }, self._keys.signer)


def _client(nats: dict[str, Any]) -> dict[str, Any]:
    info = nats.get("client_info") or {}
    return {"host": info.get("host"), "id": info.get("id"), "kind": info.get("type")}
