"""Cancel a reply: ask the assistant generating it over NATS, or end it in the store if nobody is."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors

from contracts.errors import Unavailable
from contracts.events import MessageEvent
from contracts.models import ENDED, Message
from contracts.requests import MessageReply
from contracts.subjects import cancel_subject

from ..deps import Deps
from ..store import SessionState

# Short asks, many tries (15 s of asking a live assistant, as 5 asks of 3 s were): an ask lost on
# the way costs one ASK_TIMEOUT, then the store shows the reply ended. Stock nats-py's
# Subscription.drain() lost asks that reached the assistant as it stopped listening (its PING
# overtook its UNSUB); the service's OrderedClient no longer does (contracts/barrier.py). A reply
# a vanished worker still holds answers 503 after about 2 s of tries.
ASK_TIMEOUT = 0.5
TRIES = 30
decode_reply = msgspec.json.Decoder(MessageReply).decode


async def cancel(deps: Deps, state: SessionState, msg: Message) -> Message:
    """The reply once it is cancelled (or ended some other way first); an ended reply comes back unchanged."""
    for _ in range(TRIES):
        if msg.status in ENDED:
            return msg
        try:
            answer = await deps.nc.request(cancel_subject(msg.id), b"", timeout=ASK_TIMEOUT)
            return decode_reply(answer.data).message
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            # Nobody is generating it: end it here, unless a worker claimed it meanwhile.
            ended = await deps.store.finish_reply(msg.id, None, "cancelled", msg.content, deps.clock())
            if ended is not None:
                await deps.events.publish(state.uid, msg.session_id, MessageEvent(message=ended))
                return ended
        await asyncio.sleep(0.05)
        msg = await deps.store.get_message(msg.id) or msg
    raise Unavailable("could not cancel the reply right now, retry")
