"""Dev-mode static file server for the browser client (gateway/web/dist) plus its `config.json`.

Stdlib only (`http.server` in a thread), so `docchat serve` needs nothing more; not for production.
"""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger("web")

WEB_DIST = Path(__file__).resolve().parent / "web" / "dist"
"""Where gateway/web/setup builds the page."""

NOT_BUILT = b"""<!doctype html><title>docchat</title>
<p>The browser client is not built: run <code>gateway/web/setup</code>, then reload.</p>"""


class _Handler(SimpleHTTPRequestHandler):
    ws_url = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/config.json":
            return self._send(HTTPStatus.OK, "application/json", json.dumps({"wsUrl": self._ws_url()}).encode())
        if path in ("/", "/index.html") and not Path(self.directory, "index.html").exists():
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/html; charset=utf-8", NOT_BUILT)
        return super().do_GET()

    def _ws_url(self) -> str:
        """ws_url with `{host}` replaced by the host name the browser used to reach this server."""
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or "127.0.0.1"
        return self.ws_url.replace("{host}", f"[{host}]" if ":" in host else host)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("web_request", line=format % args)


class WebServer:
    """Serve `directory` and a generated `/config.json` (`{"wsUrl": ws_url}`) on host:port (0: a free port).

    `ws_url` may contain `{host}`, replaced per request by the host name the browser used.
    Use as `async with WebServer(...) as web:`; `web.url` is the page's address once started.
    """

    def __init__(self, host: str, port: int, directory: str | Path = WEB_DIST, ws_url: str = "ws://{host}:8080") -> None:
        self.host, self.port, self.directory, self.ws_url = host, port, Path(directory), ws_url
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve in a daemon thread."""
        handler = partial(type("Handler", (_Handler,), {"ws_url": self.ws_url}), directory=str(self.directory))
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="docchat-web", daemon=True)
        self._thread.start()
        if not (self.directory / "index.html").exists():
            log.warning("web_not_built", directory=str(self.directory), hint="run gateway/web/setup")
        log.info("web_serving", url=self.url, ws_url=self.ws_url)

    async def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    async def __aenter__(self) -> "WebServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
