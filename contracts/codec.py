"""msgspec encoders and decoders, built once and shared."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import BadRequest, ErrorBody, TooLarge
from .events import AnyEvent

T = TypeVar("T")

encoder = msgspec.json.Encoder()
encode = encoder.encode
event_decoder = msgspec.json.Decoder(AnyEvent)
error_decoder = msgspec.json.Decoder(ErrorBody)
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    """The cached decoder for one body type."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def decode_request(data: bytes, kind: type[T]) -> T:
    """Decode a request body or raise BadRequest / TooLarge with a message safe to return."""
    try:
        return decoder(kind).decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "length" in text and "<=" in text:
            raise TooLarge(text) from exc
        raise BadRequest(text) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("body is not a JSON object") from exc
    except RecursionError as exc:
        raise BadRequest("body is nested too deeply") from exc
