"""The browser client (gateway/web) in headless Chromium against a running docchat, over the NATS websocket.

Chromium is driven by gateway/web/test/driver.mjs (playwright-core, installed by gateway/web/setup),
one JSON command per line. Missing Chromium, npm packages or bundle fail the tests: run gateway/web/setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator

import msgspec
import pytest

from actors.natsserver import EmbeddedNats
from actors.settings import Settings
from contracts.client import AdminClient, DocchatClient
from gateway.devtoken import mint
from gateway.keys import CalloutKeys
from gateway.web_server import WEB_DIST, WebServer

from .conftest import CALLOUT_PASSWORD

WEB = Path(__file__).resolve().parent.parent / "gateway" / "web"
DRIVER = WEB / "test" / "driver.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SECRET = "browser-test-secret-long-enough-for-hs256-0123456789"


def offline_reply(content: str) -> str:
    """What the offline model answers to a message (actors.assistant.model.offline_text)."""
    return f"[offline model] You said: {content}"


@pytest.fixture
def settings(settings: Settings, callout_keys: CalloutKeys) -> Settings:
    """The whole service: callout admitting tokens signed with SECRET, and the offline assistant."""
    return msgspec.structs.replace(
        settings, run_callout=True, run_assistant=True, model_provider="offline", offline_delay_seconds=0.05,
        jwt_secret=SECRET, callout_password=CALLOUT_PASSWORD, callout_seed=callout_keys.signer.seed,
        callout_xkey_seed=callout_keys.xkey.seed)


@pytest.fixture
async def web(nats_server: EmbeddedNats) -> AsyncIterator[WebServer]:
    assert (WEB_DIST / "app.js").exists(), f"{WEB_DIST} is not built: run gateway/web/setup"
    async with WebServer("127.0.0.1", 0, WEB_DIST, nats_server.ws_url) as server:
        yield server


class Browser:
    """Headless Chromium behind driver.mjs: `await call(op, **args)` sends one command, returns its result."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc, self.next_id = proc, 0

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"id": self.next_id, "op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "the browser driver exited (see its stderr above)"
        answer = json.loads(line)
        assert answer["id"] == self.next_id
        if "error" in answer:
            raise AssertionError(f"browser {op} failed: {answer['error']}")
        return answer["result"]

    async def open(self, url: str) -> "Page":
        return Page(self, await self.call("open", url=url))


class Page:
    """One tab of the docchat page, driven through its UI."""

    def __init__(self, browser: Browser, number: int) -> None:
        self.browser, self.number = browser, number

    async def fill(self, selector: str, value: str) -> None:
        await self.browser.call("fill", page=self.number, selector=selector, value=value)

    async def click(self, selector: str) -> None:
        await self.browser.call("click", page=self.number, selector=selector)

    async def eval(self, expr: str) -> Any:
        return await self.browser.call("eval", page=self.number, expr=expr)

    async def wait(self, expr: str, timeout: float = 15.0) -> Any:
        """Wait until the JS expression is truthy; fail with the page's status and error line if not."""
        try:
            return await self.browser.call("wait", timeout=timeout + 5, page=self.number, expr=expr,
                                           timeoutMs=timeout * 1000)
        except AssertionError as exc:
            seen = await self.eval("[document.getElementById('status').textContent,"
                                   " document.getElementById('error').textContent,"
                                   " [...document.querySelectorAll('.msg')].map(e => e.innerText)]")
            raise AssertionError(f"{exc}\nwaiting for: {expr}\npage status, error, messages: {seen}") from None

    async def login(self, sub: str, token: str, ws_url: str | None = None) -> None:
        await self.wait("document.body.dataset.ready === 'true'")
        if ws_url:
            await self.fill("#ws-url", ws_url)
        await self.fill("#sub", sub)
        await self.fill("#token", token)
        await self.click("#connect")
        await self.wait_status("connected")

    async def wait_status(self, status: str, timeout: float = 15.0) -> None:
        await self.wait(f"document.getElementById('status').dataset.state === {json.dumps(status)}", timeout)

    async def open_document(self, document_id: str) -> str:
        """Open the chat of a document; the session id the page shows."""
        await self.fill("#document-id", document_id)
        await self.click("#open-document")
        info = await self.wait("document.getElementById('session-info').textContent")
        return info.removeprefix("session ")

    async def send(self, content: str) -> None:
        await self.fill("#content", content)
        await self.click("#send")

    async def messages(self) -> list[dict[str, str]]:
        return await self.eval("[...document.querySelectorAll('#messages .msg')].map(li => ({seq: li.dataset.seq,"
                               " role: li.classList.contains('user') ? 'user' : 'assistant',"
                               " status: li.dataset.status, content: li.querySelector('.content').textContent}))")

    async def wait_reply(self, content: str, timeout: float = 15.0) -> None:
        """Wait until the page shows the offline model's complete reply to content."""
        expected = json.dumps(offline_reply(content))
        await self.wait("[...document.querySelectorAll('.msg.assistant[data-status=complete] .content')]"
                        f".some(e => e.textContent === {expected})", timeout)

    async def record_assistant_texts(self) -> None:
        """From now on, remember every text an assistant message showed (window.seenTexts)."""
        await self.eval("""(() => {
            window.seenTexts = [];
            const note = () => document.querySelectorAll('.msg.assistant .content').forEach(e => {
                if (window.seenTexts.at(-1) !== e.textContent) window.seenTexts.push(e.textContent);
            });
            new MutationObserver(note).observe(document.getElementById('messages'),
                {subtree: true, childList: true, characterData: true});
        })()""")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run gateway/web/setup (installs Debian chromium)"
    assert (WEB / "node_modules" / "playwright-core").exists(), "playwright-core is missing: run gateway/web/setup"
    proc = await asyncio.create_subprocess_exec(
        "node", str(DRIVER), cwd=WEB, env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)  # stderr: the page's console, to ours
    assert proc.stdout
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready and json.loads(ready).get("ready"), f"Chromium did not start: {ready!r}"
    b = Browser(proc)
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            await b.call("close", timeout=10)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_streamed_reply_shows_in_page_and_other_user_sees_nothing(host, admin: AdminClient, web: WebServer,
                                                                        browser: Browser) -> None:
    document = "doc <browser> ✓"
    await admin.grant(document, "alice")
    await admin.grant(document, "bob")

    alice = await browser.open(web.url)
    await alice.login("alice", mint(SECRET, "alice"))
    alice_session = await alice.open_document(document)
    await alice.record_assistant_texts()
    question = "what does this document say? 🙂"
    await alice.send(question)
    await alice.wait_reply(question)

    final = offline_reply(question)
    shown = await alice.messages()
    assert [(m["seq"], m["role"], m["status"], m["content"]) for m in shown] == [
        ("1", "user", "complete", question), ("2", "assistant", "complete", final)]
    # The reply was rendered as it streamed: some texts shown were proper, growing prefixes of it.
    seen: list[str] = await alice.eval("window.seenTexts")
    partial = [t for t in seen if t and t != final]
    assert partial, f"no intermediate streaming state rendered: {seen}"
    assert all(final.startswith(t) for t in partial), seen

    bob = await browser.open(web.url)
    await bob.login("bob", mint(SECRET, "bob"))
    bob_session = await bob.open_document(document)
    assert bob_session != alice_session
    await bob.send("bob here")
    await bob.wait_reply("bob here")
    assert [m["content"] for m in await bob.messages()] == ["bob here", offline_reply("bob here")]
    assert len(await alice.messages()) == 2  # and alice saw none of bob's


class Proxy:
    """A TCP forwarder to target; `cut()` drops every connection and refuses new ones until `resume()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.refusing = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "Proxy":
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self.writers.discard(writer)

    def cut(self) -> None:
        self.refusing = True
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    def resume(self) -> None:
        self.refusing = False


async def test_page_catches_up_after_reconnect_with_refreshed_token(host, admin: AdminClient, nc, web: WebServer,
                                                                    browser: Browser,
                                                                    nats_server: EmbeddedNats) -> None:
    document = "catch-up.xml"
    await admin.grant(document, "carol")
    async with Proxy(nats_server.host, nats_server.ws_port) as proxy:
        page = await browser.open(web.url)
        short_lived = mint(SECRET, "carol", ttl_seconds=5)
        expires = time.time() + 5
        await page.login("carol", short_lived, ws_url=f"ws://127.0.0.1:{proxy.port}")
        # A fresh token for every later reconnect: the first one expires while the page is away.
        await page.fill("#token", mint(SECRET, "carol"))
        await page.click("#update-token")
        sid = await page.open_document(document)
        await page.send("before")
        await page.wait_reply("before")

        proxy.cut()
        await page.wait("['disconnected', 'reconnecting'].includes(document.getElementById('status').dataset.state)")
        # Meanwhile the conversation goes on (a trusted service sending for carol): the page misses its events.
        carol = DocchatClient(nc, "carol")
        sent = await carol.send(sid, "while you were away")
        for _ in range(200):
            reply = (await carol.messages(sid, after_seq=sent.reply.seq - 1)).messages[0]
            if reply.status == "complete":
                break
            await asyncio.sleep(0.05)
        assert reply.content == offline_reply("while you were away")
        assert [m["content"] for m in await page.messages()][-1] == offline_reply("before")
        while time.time() < expires + 1.5:  # the page's first token is now expired
            await asyncio.sleep(0.1)

        proxy.resume()
        await page.wait_status("connected", timeout=20)
        await page.wait_reply("while you were away")
        assert [(m["seq"], m["content"]) for m in await page.messages()] == [
            ("1", "before"), ("2", offline_reply("before")),
            ("3", "while you were away"), ("4", offline_reply("while you were away"))]

        # And it keeps working live after the reconnect.
        await page.send("after")
        await page.wait_reply("after")
        assert len(await page.messages()) == 6
