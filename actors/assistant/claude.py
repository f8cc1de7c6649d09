"""Anthropic's Messages API through the `anthropic` SDK: our own retries before the first chunk,
a stall timeout, and every failure as one ModelError safe to show a user."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import anthropic
import httpx2
import structlog

from actors.settings import Settings

from .model import ChunkStream, ModelError, ModelRequest

log = structlog.get_logger(__name__)

_UNAVAILABLE = "The AI model is overloaded or unreachable right now. Please retry in a moment."
_CUT_OFF = "The AI model's reply was interrupted. Please retry."
_TIMEOUT = "The AI model took too long to respond. Please retry."
_REFUSED = "The AI model could not process this request (the document may be too long)."
_MISCONFIGURED = "The assistant's model access is misconfigured. Please contact support."
_FAILED = "The AI model could not answer. Please retry."
_NO_KEY = "The assistant is not configured: no model API key is set."
_RETRYABLE_TYPES = {"overloaded_error", "rate_limit_error", "api_error", "timeout_error"}


class _Incomplete(Exception):
    """The event stream ended without message_stop."""


def _classify(exc: Exception) -> tuple[ModelError, bool, float | None]:
    """Map a failure to (error for the user, retryable before text?, retry-after seconds)."""
    if isinstance(exc, ModelError):
        return exc, False, None
    if isinstance(exc, (TimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        return ModelError("model_timeout", _TIMEOUT), True, None
    if isinstance(exc, anthropic.APIStatusError):
        status, headers = exc.status_code, exc.response.headers
        if status in (408, 429) or status >= 500 or exc.type in _RETRYABLE_TYPES:
            retryable = headers.get("x-should-retry") != "false"
            return ModelError("model_unavailable", _UNAVAILABLE), retryable, _retry_after(headers)
        if status in (401, 403) or exc.type in ("authentication_error", "permission_error"):
            return ModelError("model_error", _MISCONFIGURED), False, None
        if status in (400, 413, 422):
            return ModelError("model_error", _REFUSED), False, None
        return ModelError("model_error", _FAILED), False, None
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError, _Incomplete)):
        cut_off = isinstance(exc, (_Incomplete, httpx2.RemoteProtocolError))
        return ModelError("model_unavailable", _CUT_OFF if cut_off else _UNAVAILABLE), True, None
    return ModelError("model_error", _FAILED), False, None


def _retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds the API asked us to wait (`retry-after-ms` or numeric `retry-after`), if any."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


class AnthropicModel:
    """The Messages API through the `anthropic` SDK, with our own retries and stall detection."""

    def __init__(self, client: anthropic.AsyncAnthropic, settings: Settings) -> None:
        # Our retry loop is the only one: the SDK's would multiply the attempts and the waits.
        self._client = client.with_options(max_retries=0) if client.max_retries else client
        self._settings = settings

    @property
    def has_api_key(self) -> bool:
        """Whether the client holds any credential (api key, auth token or provider)."""
        client = self._client
        return bool(client.api_key or client.auth_token or client.credentials is not None)

    def stream(self, request: ModelRequest) -> _AnthropicStream:
        """Stream one reply; raises ModelError("no_api_key") on entry when no key is set."""
        return _AnthropicStream(self._client, self._settings, request, self.has_api_key)

    async def aclose(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()


class _AnthropicStream(ChunkStream):
    """One reply: the ModelStream and its own context manager; the call starts on iteration."""

    def __init__(self, client: anthropic.AsyncAnthropic, settings: Settings,
                 request: ModelRequest, has_key: bool) -> None:
        self.model = request.model
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self._client, self._settings, self._request = client, settings, request
        self._has_key = has_key
        self._chunks = self._generate()

    async def __aenter__(self) -> _AnthropicStream:
        if not self._has_key:
            raise ModelError("no_api_key", _NO_KEY)
        return self

    async def _generate(self) -> AsyncIterator[str]:
        settings, started = self._settings, time.monotonic()
        attempt = 0
        while True:
            began = False
            try:
                async with aclosing(self._attempt()) as chunks:
                    async for text in chunks:
                        began = True
                        yield text
            except Exception as exc:  # noqa: BLE001 - every failure is mapped to a ModelError
                error, retryable, retry_after = _classify(exc)
                delay = self._backoff(attempt, retry_after)
                if began or not retryable or attempt >= settings.model_retries or delay is None:
                    log.warning(
                        "model.failed", code=error.code, attempts=attempt + 1, began=began,
                        cause=type(exc).__name__, status=getattr(exc, "status_code", None),
                        exc_info=not isinstance(exc, (anthropic.APIError, httpx2.HTTPError,
                                                      TimeoutError, _Incomplete)),
                    )
                    raise error from exc
                log.info("model.retry", attempt=attempt + 1, delay=round(delay, 3),
                         cause=type(exc).__name__, status=getattr(exc, "status_code", None))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            log.info("model.reply", model=self.model, input_tokens=self.input_tokens,
                     output_tokens=self.output_tokens, stop_reason=self.stop_reason,
                     attempts=attempt + 1, seconds=round(time.monotonic() - started, 3))
            return

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Exponential backoff with jitter, at least `retry_after`; None if that is too long."""
        cap = self._settings.model_backoff_max_seconds
        delay = min(cap, self._settings.model_backoff_seconds * 2**attempt) * random.uniform(0.5, 1)
        if retry_after is not None:
            if retry_after > cap:
                return None
            delay = max(delay, retry_after)
        return delay

    async def _attempt(self) -> AsyncIterator[str]:
        """One HTTP call: yield its text deltas; record model, usage and stop reason."""
        request, settings = self._request, self._settings
        manager = self._client.messages.stream(
            model=request.model,
            max_tokens=request.max_tokens,
            system=request.system,
            messages=[{"role": role, "content": content} for role, content in request.messages],
            timeout=httpx2.Timeout(settings.model_timeout_seconds,
                                   connect=min(10.0, settings.model_timeout_seconds)),
        )
        stopped = False
        async with manager as stream, aclosing(stream.__aiter__()) as events:
            while True:
                # Only the wait for the next event is timed, never the consumer's work on a chunk.
                async with asyncio.timeout(settings.model_stall_seconds):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                if event.type == "message_start":
                    self.model = event.message.model
                    self.input_tokens = event.message.usage.input_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if event.delta.text:
                        yield event.delta.text
                elif event.type == "message_delta":
                    self.output_tokens = event.usage.output_tokens
                    self.stop_reason = event.delta.stop_reason
                elif event.type == "message_stop":
                    stopped = True
        if not stopped:
            raise _Incomplete()


