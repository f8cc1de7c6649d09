"""The admin actor: document grants and revokes, and usage reports, for trusted services."""

from __future__ import annotations

from contracts.requests import GetUsage, Grant, OkReply, Revoke, UsageReply
from contracts.subjects import user_token

from ..access import announce_change
from ..deps import Call, Deps
from ..runtime.actor import Actor


class AdminActor(Actor):
    """Writes grants; one at a time, so a grant and a revoke of the same pair keep their order."""

    def __init__(self, key: str, deps: Deps) -> None:
        super().__init__(key, deps.settings.mailbox_size * 4, deps.settings.idle_seconds)
        self.deps = deps

    async def receive(self, call: Call) -> object:
        store = self.deps.store
        match call.body:
            case Grant(document_id=doc, user_id=sub, role=role):
                await store.grant(user_token(sub), sub, doc, role, self.deps.clock())
                await self.changed(user_token(sub), doc)
            case Revoke(document_id=doc, user_id=sub):
                await store.revoke(user_token(sub), doc)
                await self.changed(user_token(sub), doc)
            case GetUsage(user_id=sub, from_ms=start, to_ms=end):
                tokens_in, tokens_out, count = await store.usage(user_token(sub), start, end)
                return UsageReply(user_id=sub, input_tokens=tokens_in, output_tokens=tokens_out, replies=count)
            case _:
                raise TypeError(f"unexpected {call.body!r}")
        return OkReply()

    async def changed(self, uid: str, document_id: str) -> None:
        """Forget the cached answer here at once, and on every other host by message."""
        self.deps.access.forget(uid, document_id)
        await announce_change(self.deps.nc, uid, document_id)
