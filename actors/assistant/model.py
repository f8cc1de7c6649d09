"""The assistant's model interface; `claude.py` speaks Anthropic's Messages API, `offline.py` stands in.

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

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import AsyncContextManager, Literal, Protocol

import anthropic
import structlog

from actors.settings import Settings

__all__ = ["ChunkStream", "ModelClient", "ModelError", "ModelRequest", "ModelStream", "build_model",
           "warn_if_unconfigured"]

log = structlog.get_logger(__name__)

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


class ChunkStream:
    """A ModelStream over its own `_generate()`; leaving the context closes the generator (and with
    it any HTTP response the generator holds)."""

    _chunks: AsyncIterator[str]

    async def __aexit__(self, *exc_info: object) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined] - an async generator

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks


def build_model(
    settings: Settings, *, client: anthropic.AsyncAnthropic | None = None
) -> ModelClient:
    """The model named by `settings.model_provider` ("anthropic" or "offline"); `client` overrides
    the SDK client built from settings and the ANTHROPIC_* environment."""
    from .claude import AnthropicModel
    from .offline import OfflineModel

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
    from .claude import AnthropicModel
    from .offline import OFFLINE_MODEL, OfflineModel

    if isinstance(model, AnthropicModel) and not model.has_api_key:
        log.error("model.no_api_key", detail="ANTHROPIC_API_KEY is not set: every assistant reply "
                  "will fail with no_api_key. Set it, or set DOCCHAT_MODEL_PROVIDER=offline.")
        return False
    if isinstance(model, OfflineModel):
        log.warning("model.offline", detail=f"assistant replies come from {OFFLINE_MODEL}, "
                    "a canned echo, not a real model")
    return True
