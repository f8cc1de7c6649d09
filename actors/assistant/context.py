"""The model request for one reply (pure): the document in the system prompt, the conversation as messages."""

from __future__ import annotations

from ..settings import Settings
from ..store import ReplyContext
from .model import ModelRequest


def build_request(ctx: ReplyContext, settings: Settings) -> ModelRequest:
    """System = instructions + the send's document; messages = the last 20 complete ones, oldest first."""
    system = f"{settings.system_prompt}\n\n<document>\n{ctx.document_xml}\n</document>"
    messages = [(m.role, m.content) for m in ctx.conversation]
    return ModelRequest(system=system, messages=messages, model=settings.model, max_tokens=settings.max_tokens)
