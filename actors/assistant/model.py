"""The assistant's model: one streaming interface, the Anthropic adapter and an offline stand-in.

The assistant actor sees only `ModelClient.stream(ModelRequest)`: an async context manager giving a
`ModelStream` of text chunks, after which the stream holds the model name and token usage the API
reported. Every failure is one `ModelError(code, message)`, safe to store and show a user:

    no_api_key          no credentials configured; raised at once, nothing is sent
    model_unavailable   overloaded, rate limited, 5xx, unreachable or cut off (after our retries)
    model_timeout       no response, or no event for `model_stall_seconds` (after our retries)
    model_error         anything else: the request was refused, or the reply was malformed

Only failures before the first text chunk are retried (a retry after text would repeat it).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncContextManager, Literal, Protocol

import anthropic
import httpx2
import structlog

from actors.settings import Settings

__all__ = [
    "OFFLINE_MODEL", "AnthropicModel", "ModelClient", "ModelError", "ModelRequest", "ModelStream",
    "OfflineModel", "build_model", "offline_text", "warn_if_unconfigured",
]

log = structlog.get_logger(__name__)

OFFLINE_MODEL = "docchat-offline"
"""The model name every OfflineModel reply reports."""

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call: the final system prompt (instructions + document), the conversation
    oldest first as (role, content) pairs, the model name and the output token limit."""

    system: str
    messages: Sequence[tuple[Role, str]]
    model: str
    max_tokens: int


class ModelError(Exception):
    """A failed model call; `code` (see the module docstring) and `message` are safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ModelStream(Protocol):
    """Async iterator of a reply's text chunks; once it ends, `model`, `input_tokens` and
    `output_tokens` hold what the model reported."""

    model: str
    input_tokens: int
    output_tokens: int

    def __aiter__(self) -> AsyncIterator[str]: ...


class ModelClient(Protocol):
    """What the assistant needs of a model: stream one reply; `aclose` at shutdown."""

    def stream(self, request: ModelRequest) -> AsyncContextManager[ModelStream]: ...

    async def aclose(self) -> None: ...


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


class _ChunkStream:
    """A ModelStream over its own `_generate()`; leaving the context closes the generator (and with
    it any HTTP response the generator holds)."""

    _chunks: AsyncIterator[str]

    async def __aexit__(self, *exc_info: object) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined] - an async generator

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks


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


class _AnthropicStream(_ChunkStream):
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


class _OfflineStream(_ChunkStream):
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


def build_model(
    settings: Settings, *, client: anthropic.AsyncAnthropic | None = None
) -> ModelClient:
    """The model named by `settings.model_provider` ("anthropic" or "offline"); `client` overrides
    the SDK client built from settings and the ANTHROPIC_* environment."""
    if settings.model_provider == "offline":
        return OfflineModel(delay=settings.offline_delay_seconds)
    if settings.model_provider != "anthropic":
        raise ValueError(
            f"model_provider must be 'anthropic' or 'offline', not {settings.model_provider!r}"
        )
    if client is None:
        base_url = settings.model_base_url or None
        try:
            client = anthropic.AsyncAnthropic(base_url=base_url, max_retries=0)
        except anthropic.AnthropicError as exc:  # a broken credentials profile on disk
            log.error("model.credentials_unusable", cause=type(exc).__name__, detail=str(exc))
            # An empty key is explicit, so the SDK looks no further; every stream says no_api_key.
            client = anthropic.AsyncAnthropic(base_url=base_url, api_key="", max_retries=0)
    return AnthropicModel(client, settings)


def warn_if_unconfigured(model: ModelClient) -> bool:
    """Log loudly at start-up when replies cannot work (no API key) or are canned (offline).
    Returns False when every reply would fail."""
    if isinstance(model, AnthropicModel) and not model.has_api_key:
        log.error("model.no_api_key", detail="ANTHROPIC_API_KEY is not set: every assistant reply "
                  "will fail with no_api_key. Set it, or set DOCCHAT_MODEL_PROVIDER=offline.")
        return False
    if isinstance(model, OfflineModel):
        log.warning("model.offline", detail=f"assistant replies come from {OFFLINE_MODEL}, "
                    "a canned echo, not a real model")
    return True
