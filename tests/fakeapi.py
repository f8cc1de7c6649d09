"""A local stand-in for the Anthropic Messages API (POST /v1/messages), for tests.

    async with FakeAnthropic() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        fake.script(Fail(529), Reply(["Hel", "lo"], delay=0.01))   # next two requests
        ...
        fake.requests[-1]["system"], fake.open_streams, await fake.wait_streams_closed()

It runs on the test's event loop (asyncio.start_server, minimal HTTP/1.1, one request per
connection, concurrent requests fine). Each request takes the next scripted response (FIFO); with
none left it answers `default(body)`, by default `echo_reply`: "Echo: <last user message>".
`"stream": true` gets SSE: message_start (usage.input_tokens), content_block_start, ping,
content_block_delta (text_delta)..., content_block_stop, message_delta (stop_reason,
usage.output_tokens), message_stop; else the Message JSON. Errors: `{type: "error", error: {type,
message}}` with their status code.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Drop", "Fail", "FakeAnthropic", "Reply", "Stall", "echo_reply"]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


@dataclass
class Reply:
    """A successful reply: text `chunks`, `delay` seconds before each. `model` None reports the
    requested model + "-20990101" (a dated snapshot, as the API does); token counts None are
    characters/4 of the request's system + messages and of the reply."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake."])
    delay: float = 0.0
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str = "end_turn"


@dataclass
class Fail:
    """An API error: HTTP `status` with the JSON error body (`type` defaults from the status) and
    an optional `retry-after` header; with `after`=K, a 200 stream of K chunks then an SSE error."""

    status: int = 529
    type: str | None = None
    message: str = "scripted failure"
    retry_after: float | None = None
    after: int | None = None
    reply: Reply | None = None


@dataclass
class Stall:
    """Send `after` chunks of `reply` (default: the echo), then go silent: forever, or for
    `seconds` and then finish normally."""

    after: int = 0
    seconds: float | None = None
    reply: Reply | None = None


@dataclass
class Drop:
    """Send `after` chunks of `reply`, then drop the connection mid-body (no message_stop)."""

    after: int = 0
    reply: Reply | None = None


Scripted = Reply | Fail | Stall | Drop


def echo_reply(body: dict) -> Reply:
    """The default: "Echo: <last user message>" split into word chunks."""
    last = next((m.get("content") for m in reversed(body.get("messages", []))
                 if m.get("role") == "user"), "")
    if isinstance(last, list):
        last = "".join(block.get("text", "") for block in last if isinstance(block, dict))
    return Reply(chunks=re.findall(r"\s*\S+|\s+", f"Echo: {last}"))


def _chars(body: dict) -> int:
    parts = [body.get("system", "")] + [m.get("content", "") for m in body.get("messages", [])]
    return sum(len(part if isinstance(part, str) else json.dumps(part)) for part in parts)


class FakeAnthropic:
    """The fake server: `base_url`, `script()`, `requests` (bodies), `headers`, `open_streams`."""

    def __init__(self, default: Callable[[dict], Scripted] = echo_reply, require_key: bool = True):
        self.default = default
        self.require_key = require_key  # 401 without an x-api-key or authorization header
        self.requests: list[dict] = []  # every parsed request body, in arrival order
        self.headers: list[dict[str, str]] = []  # their headers, lower-cased names
        self.streams_opened = 0  # SSE responses started
        self.streams_closed = 0  # SSE responses ended: finished, dropped or abandoned by the client
        self.base_url = ""
        self._script: deque[Scripted] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)

    @property
    def open_streams(self) -> int:
        """SSE responses in progress now."""
        return self.streams_opened - self.streams_closed

    def script(self, *responses: Scripted) -> None:
        """Queue responses for the next requests, in order."""
        self._script.extend(responses)

    async def wait_streams_closed(self, timeout: float = 2.0) -> bool:
        """Wait until no SSE response is in progress; False if `timeout` passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_streams and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.open_streams == 0

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and set `base_url`."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Stop listening and end every open connection (stalled ones too)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in
                       (line.split(":", 1) for line in head[1:] if ":" in line)}
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            if method != "POST" or path.split("?")[0] != "/v1/messages":
                return await self._error(writer, Fail(404, message=f"no route {method} {path}"))
            try:
                body = json.loads(raw)
            except ValueError:
                return await self._error(writer, Fail(400, message="body is not JSON"))
            self.requests.append(body)
            self.headers.append(headers)
            if self.require_key and not ("x-api-key" in headers or "authorization" in headers):
                return await self._error(writer, Fail(401, message="missing API key"))
            action = self._script.popleft() if self._script else self.default(body)
            if body.get("stream"):
                await self._stream(reader, writer, body, action)
            else:
                await self._json(writer, body, action)
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that went away or spoke no HTTP: just close
        finally:
            self._tasks.discard(task)
            writer.close()

    def _message(self, body: dict, reply: Reply) -> dict:
        """The Message object (content empty and output_tokens 1 as at message_start)."""
        return {"id": f"msg_fake_{next(self._ids)}", "type": "message", "role": "assistant",
                "model": reply.model or f"{body.get('model', 'claude')}-20990101",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": reply.input_tokens if reply.input_tokens is not None
                          else -(-_chars(body) // 4), "output_tokens": 1}}

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: dict,
                    extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Overloaded')}", "connection: close",
                 f"request-id: req_fake_{next(self._ids)}", "content-type: application/json",
                 f"content-length: {len(data)}", *(f"{k}: {v}" for k, v in (extra or {}).items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, fail: Fail) -> None:
        extra = {"retry-after": f"{fail.retry_after:g}"} if fail.retry_after is not None else {}
        await self._send(writer, fail.status, _error_body(fail), extra)

    async def _json(self, writer: asyncio.StreamWriter, body: dict, action: Scripted) -> None:
        if isinstance(action, Fail):
            return await self._error(writer, action)
        if isinstance(action, Drop):
            return writer.transport.abort()
        if isinstance(action, Stall):
            await asyncio.sleep(action.seconds if action.seconds is not None else 1e9)
        reply = _reply_of(body, action)
        await asyncio.sleep(reply.delay * len(reply.chunks))
        message = self._message(body, reply)
        message.update(content=[{"type": "text", "text": "".join(reply.chunks)}],
                       stop_reason=reply.stop_reason)
        message["usage"]["output_tokens"] = _output_tokens(reply)
        await self._send(writer, 200, message)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      body: dict, action: Scripted) -> None:
        if isinstance(action, Fail) and action.after is None:
            return await self._error(writer, action)
        reply = _reply_of(body, action)
        cut = None if isinstance(action, Reply) else action.after
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: "
                     b"no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        self.streams_opened += 1
        # The client sends nothing more, so a finished read means it closed the connection.
        gone = asyncio.ensure_future(reader.read(1))

        async def pause(seconds: float | None) -> None:
            await asyncio.wait({gone}, timeout=seconds)
            if gone.done():
                raise ConnectionResetError("the client closed the connection")

        async def send(event: str, data: dict) -> None:
            if gone.done():
                raise ConnectionResetError("the client closed the connection")
            frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await writer.drain()

        async def interrupt() -> bool:  # act out the Drop, Fail or Stall; True: response over
            if isinstance(action, Drop):
                writer.transport.abort()
                return True
            if isinstance(action, Fail):
                await send("error", _error_body(action))
                await _finish(writer)
                return True
            await pause(action.seconds)
            return False

        try:
            await send("message_start", {"type": "message_start",
                                         "message": self._message(body, reply)})
            await send("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}})
            await send("ping", {"type": "ping"})
            for i, text in enumerate(reply.chunks):
                if i == cut and await interrupt():
                    return
                if reply.delay > 0:
                    await pause(reply.delay)
                await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text}})
            if cut is not None and cut >= len(reply.chunks) and await interrupt():
                return
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            usage, stop = {"output_tokens": _output_tokens(reply)}, reply.stop_reason
            await send("message_delta", {"type": "message_delta", "usage": usage,
                                         "delta": {"stop_reason": stop, "stop_sequence": None}})
            await send("message_stop", {"type": "message_stop"})
            await _finish(writer)
        finally:
            self.streams_closed += 1
            gone.cancel()


def _reply_of(body: dict, action: Scripted) -> Reply:
    return (action if isinstance(action, Reply) else action.reply) or echo_reply(body)


def _output_tokens(reply: Reply) -> int:
    default = -(-len("".join(reply.chunks)) // 4)
    return reply.output_tokens if reply.output_tokens is not None else default


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _error_body(fail: Fail) -> dict:
    kind = fail.type or ERROR_TYPES.get(fail.status, "api_error" if fail.status >= 500
                                        else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": fail.message}}
