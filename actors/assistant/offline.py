"""A deterministic stand-in for the model, for demos and load tests; its replies say what it is."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator

from .model import ChunkStream, ModelRequest

OFFLINE_MODEL = "docchat-offline"
"""The model name every OfflineModel reply reports."""


def offline_text(request: ModelRequest) -> str:
    """The OfflineModel's reply to `request`: a labelled echo of the last user message."""
    last = next((content for role, content in reversed(request.messages) if role == "user"), "")
    return f"[offline model] You said: {last}"


class OfflineModel:
    """Deterministic stand-in without network, for dev and load tests; clearly labelled."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def stream(self, request: ModelRequest) -> _OfflineStream:
        """Stream `offline_text(request)` word by word, `delay` seconds before each chunk."""
        return _OfflineStream(request, self.delay)

    async def aclose(self) -> None:
        """Nothing to close."""


def _quarter(text_length: int) -> int:
    return max(1, math.ceil(text_length / 4))


class _OfflineStream(ChunkStream):
    def __init__(self, request: ModelRequest, delay: float) -> None:
        self.model = OFFLINE_MODEL
        self.input_tokens = _quarter(len(request.system) + sum(len(c) for _, c in request.messages))
        self.output_tokens = 0
        self._text, self._delay = offline_text(request), delay
        self._chunks = self._generate()

    async def __aenter__(self) -> _OfflineStream:
        return self

    async def _generate(self) -> AsyncIterator[str]:
        for chunk in re.findall(r"\s*\S+|\s+", self._text):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            yield chunk
        self.output_tokens = _quarter(len(self._text))
