"""One actor per user for getOrCreate and byDocument, so a user's session lookups never race."""

from __future__ import annotations

from contracts.requests import ByDocument, GetOrCreate, MaybeSessionReply, SessionReply

from ..deps import Call, Deps
from ..runtime.actor import Actor


class UserActor(Actor):
    """Finds or makes a user's one session per document, after checking access."""

    def __init__(self, uid: str, deps: Deps) -> None:
        super().__init__(uid, deps.settings.mailbox_size, deps.settings.idle_seconds)
        self.deps = deps

    async def receive(self, call: Call) -> object:
        store = self.deps.store
        match call.body:
            case GetOrCreate(document_id=doc):
                await self.deps.access.check(call.uid, doc)
                session, created = await store.get_or_create_session(call.uid, doc, self.deps.ids(), self.deps.clock())
                return SessionReply(session=session, created=created)
            case ByDocument(document_id=doc):
                await self.deps.access.check(call.uid, doc)
                return MaybeSessionReply(session=await store.find_session(call.uid, doc))
        raise TypeError(f"unexpected {call.body!r}")
