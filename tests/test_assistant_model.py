"""The assistant's model adapter: the real anthropic SDK against the local fake Messages API."""

from __future__ import annotations

import asyncio
import time

import anthropic
import pytest
from structlog.testing import capture_logs

from actors.assistant.claude import AnthropicModel
from actors.assistant.model import ModelError, ModelRequest, build_model, warn_if_unconfigured
from actors.assistant.offline import OFFLINE_MODEL, OfflineModel, offline_text
from actors.settings import Settings, from_env
from tests.fakeapi import Drop, Fail, FakeAnthropic, Reply, Stall

STALL = 0.5
REQUEST = ModelRequest(
    system="Be brief.\n<document>The cat sat.</document>",
    messages=[("user", "Who sat?"), ("assistant", "The cat."), ("user", "Where?")],
    model="claude-test",
    max_tokens=77,
)


def model_settings(**overrides: object) -> Settings:
    """Small timings, so that retries and stalls take milliseconds to half a second."""
    base = dict(model_stall_seconds=STALL, model_timeout_seconds=5.0, model_retries=3,
                model_backoff_seconds=0.01, model_backoff_max_seconds=0.2)
    return from_env({}, **{**base, **overrides})


@pytest.fixture
async def fake():
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def client(fake):
    sdk = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-test-secret")
    yield sdk
    await sdk.close()


async def collect(model, request: ModelRequest = REQUEST):
    """Run one reply to the end: (chunks, stream)."""
    async with model.stream(request) as stream:
        chunks = [chunk async for chunk in stream]
    return chunks, stream


async def failure(model, request: ModelRequest = REQUEST) -> tuple[ModelError, list[str]]:
    """Run one reply that must fail: (the ModelError, the chunks that came before it)."""
    chunks: list[str] = []
    with pytest.raises(ModelError) as caught:
        async with model.stream(request) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    return caught.value, chunks


async def test_text_chunks_arrive_in_order_and_model_and_usage_come_from_the_api(fake, client):
    fake.script(Reply(["Hel", "lo, ", "wor", "ld", "!"], delay=0.01, model="claude-snapshot-7",
                      input_tokens=123, output_tokens=9, stop_reason="max_tokens"))
    chunks, stream = await collect(AnthropicModel(client, model_settings()))
    assert chunks == ["Hel", "lo, ", "wor", "ld", "!"]
    assert (stream.model, stream.input_tokens, stream.output_tokens) == ("claude-snapshot-7", 123, 9)
    assert stream.stop_reason == "max_tokens"


async def test_the_request_carries_system_messages_model_and_max_tokens(fake, client):
    await collect(AnthropicModel(client, model_settings()))
    [body] = fake.requests
    assert body["system"] == REQUEST.system
    assert body["messages"] == [{"role": "user", "content": "Who sat?"},
                                {"role": "assistant", "content": "The cat."},
                                {"role": "user", "content": "Where?"}]
    assert (body["model"], body["max_tokens"], body["stream"]) == ("claude-test", 77, True)


async def test_default_fake_reply_echoes_the_last_user_message(fake, client):
    chunks, stream = await collect(AnthropicModel(client, model_settings()))
    assert "".join(chunks) == "Echo: Where?"
    assert stream.model == "claude-test-20990101"  # what the API reported, not what we asked
    assert stream.input_tokens == -(-(len(REQUEST.system) + len("Who sat?The cat.Where?")) // 4)


async def test_overloaded_rate_limited_and_server_errors_are_retried_then_succeed(fake, client):
    fake.script(Fail(529), Fail(429, retry_after=0), Fail(500), Reply(["fine"]))
    chunks, stream = await collect(AnthropicModel(client, model_settings(model_retries=3)))
    assert (chunks, stream.output_tokens) == (["fine"], 1)
    assert len(fake.requests) == 4
    assert all(body == fake.requests[0] for body in fake.requests)  # the same call each time


async def test_after_the_last_retry_the_error_is_model_unavailable_and_safe_to_show(fake, client):
    fake.script(*[Fail(529, message="internal detail xyz")] * 3, Reply(["never"]))
    error, chunks = await failure(AnthropicModel(client, model_settings(model_retries=2)))
    assert (error.code, chunks, len(fake.requests)) == ("model_unavailable", [], 3)
    for secret in ("sk-test-secret", "xyz", "529", "127.0.0.1", "Error code"):
        assert secret not in error.message


async def test_retry_after_is_waited_for_when_small_and_not_when_large(fake, client):
    model = AnthropicModel(client, model_settings(model_backoff_max_seconds=1.0))
    fake.script(Fail(429, retry_after=0.3), Reply(["ok"]))
    started = time.monotonic()
    assert (await collect(model))[0] == ["ok"]
    assert time.monotonic() - started >= 0.3

    fake.requests.clear()
    fake.script(Fail(429, retry_after=60), Reply(["too late"]))
    started = time.monotonic()
    error, _ = await failure(model)
    assert (error.code, len(fake.requests)) == ("model_unavailable", 1)
    assert time.monotonic() - started < 5.0  # not the 60 s asked for (slack for a loaded CI machine)


async def test_refused_requests_are_not_retried(fake, client):
    model = AnthropicModel(client, model_settings())
    fake.script(Fail(400, message="prompt is too long"), Fail(401))
    refused, _ = await failure(model)
    unauthorized, _ = await failure(model)
    assert (refused.code, unauthorized.code, len(fake.requests)) == ("model_error", "model_error", 2)
    assert "too long" in refused.message and "prompt" not in refused.message


async def test_a_stall_after_text_raises_model_timeout_within_the_stall_time(fake, client):
    fake.script(Stall(after=2, reply=Reply(["one ", "two ", "three"])))
    started = time.monotonic()
    error, chunks = await failure(AnthropicModel(client, model_settings()))
    elapsed = time.monotonic() - started
    assert (error.code, chunks, len(fake.requests)) == ("model_timeout", ["one ", "two "], 1)
    assert STALL <= elapsed < STALL + 2.0  # cut at the stall, well before the 5 s overall timeout
    assert await fake.wait_streams_closed(1.0)


async def test_a_stall_before_any_text_is_retried(fake, client):
    fake.script(Stall(after=0), Reply(["recovered"]))
    chunks, _ = await collect(AnthropicModel(client, model_settings()))
    assert (chunks, len(fake.requests)) == (["recovered"], 2)


async def test_a_short_pause_below_the_stall_time_is_not_a_stall(fake, client):
    fake.script(Stall(after=1, seconds=STALL / 2, reply=Reply(["a", "b"])))
    chunks, _ = await collect(AnthropicModel(client, model_settings()))
    assert (chunks, len(fake.requests)) == (["a", "b"], 1)


async def test_a_dropped_connection_is_retried_before_text_and_fails_after(fake, client):
    model = AnthropicModel(client, model_settings())
    fake.script(Drop(after=0), Reply(["again"]))
    assert (await collect(model))[0] == ["again"]

    fake.script(Drop(after=1, reply=Reply(["partial", " lost"])))
    error, chunks = await failure(model)
    assert (error.code, chunks, len(fake.requests)) == ("model_unavailable", ["partial"], 3)


async def test_an_error_event_in_the_stream_is_retried_before_text_and_fails_after(fake, client):
    model = AnthropicModel(client, model_settings())
    fake.script(Fail(529, after=0), Reply(["ok"]))
    assert (await collect(model))[0] == ["ok"]

    fake.script(Fail(529, after=1, reply=Reply(["half", "way"])))
    error, chunks = await failure(model)
    assert (error.code, chunks, len(fake.requests)) == ("model_unavailable", ["half"], 3)


async def test_an_unreachable_api_is_model_unavailable_after_the_retries():
    async with FakeAnthropic() as gone:
        base_url = gone.base_url  # nothing listens there once the fake has stopped
    sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test")
    error, _ = await failure(AnthropicModel(sdk, model_settings(model_retries=2)))
    await sdk.close()
    assert error.code == "model_unavailable"


async def test_closing_the_stream_early_closes_the_http_stream(fake, client):
    fake.script(Reply(["tick "] * 100, delay=0.02))
    async with AnthropicModel(client, model_settings()).stream(REQUEST) as stream:
        async for _ in stream:
            assert fake.open_streams == 1
            break
    assert await fake.wait_streams_closed(0.5)
    assert fake.streams_opened == 1


async def test_cancelling_the_reader_closes_the_http_stream(fake, client):
    fake.script(Stall(after=1))
    got_text = asyncio.Event()

    async def read() -> None:
        async with AnthropicModel(client, model_settings(model_stall_seconds=30)).stream(REQUEST) as s:
            async for _ in s:
                got_text.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(got_text.wait(), 2)
    assert fake.open_streams == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_streams_closed(0.5)


async def test_concurrent_replies_each_get_their_own_text(fake, client):
    model = AnthropicModel(client, model_settings())
    requests = [ModelRequest("s", [("user", f"number {i}")], "claude-test", 10) for i in range(8)]
    results = await asyncio.gather(*(collect(model, r) for r in requests))
    assert ["".join(chunks) for chunks, _ in results] == [f"Echo: number {i}" for i in range(8)]


@pytest.mark.parametrize("config_dir", ["unset", "empty"])
async def test_without_an_api_key_each_stream_fails_at_once_and_nothing_is_sent(
    fake, monkeypatch, tmp_path, config_dir
):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE",
                 "ANTHROPIC_CONFIG_DIR", "ANTHROPIC_FEDERATION_RULE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no profile in ~/.config/anthropic
    if config_dir == "empty":  # the SDK's constructor raises on this; build_model must not
        monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    model = build_model(model_settings(model_base_url=fake.base_url))
    error, _ = await failure(model)
    assert error.code == "no_api_key"
    assert fake.requests == []
    with capture_logs() as logs:
        assert warn_if_unconfigured(model) is False
    assert [(e["event"], e["log_level"]) for e in logs] == [("model.no_api_key", "error")]
    assert "ANTHROPIC_API_KEY" in logs[0]["detail"]
    await model.aclose()


async def test_a_configured_model_passes_the_startup_check(client):
    with capture_logs() as logs:
        assert warn_if_unconfigured(AnthropicModel(client, model_settings())) is True
    assert logs == []


async def test_the_fake_answers_non_streaming_requests_and_errors_as_json(fake, client):
    message = await client.messages.create(model="claude-x", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
    assert (message.content[0].text, message.model) == ("Echo: hi", "claude-x-20990101")
    fake.script(Fail(529))
    with pytest.raises(anthropic.OverloadedError) as caught:
        await client.with_options(max_retries=0).messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.type == "overloaded_error"


async def test_offline_model_is_deterministic_and_labelled():
    model = OfflineModel()
    first, stream = await collect(model)
    second, _ = await collect(model)
    text = "".join(first)
    assert first == second and len(first) > 1
    assert text == offline_text(REQUEST) == "[offline model] You said: Where?"
    assert stream.model == OFFLINE_MODEL == "docchat-offline"
    assert stream.output_tokens == -(-len(text) // 4)
    assert stream.input_tokens == -(-(len(REQUEST.system) + len("Who sat?The cat.Where?")) // 4)


async def test_offline_model_waits_between_chunks_when_asked():
    started = time.monotonic()
    chunks, _ = await collect(OfflineModel(delay=0.02))
    assert time.monotonic() - started >= 0.02 * len(chunks)


def test_build_model_picks_the_provider_from_settings():
    assert isinstance(build_model(model_settings(model_provider="offline")), OfflineModel)
    sdk = anthropic.AsyncAnthropic(api_key="sk-test")
    model = build_model(model_settings(model_provider="anthropic"), client=sdk)
    assert isinstance(model, AnthropicModel) and model.has_api_key
    with pytest.raises(ValueError):
        build_model(model_settings(model_provider="gpt"))
