"""The echo floor: a plain nats.micro responder on docchat's subject shapes under another prefix.

It answers every request at once with a JSON body of the size docchat's reply had on that endpoint,
so the difference to docchat is docchat's own work. `python -m bench.echo --nats-url ...` runs it in
its own process (as docchat runs in its own); `EchoResponder` runs it in the caller's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

import nats
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from contracts.barrier import flushed

ECHO_PREFIX = "bench.echo"
SESSION_VERBS = ("send", "messages", "cancel", "retry")
USER_VERBS = ("getOrCreate", "byDocument")
DEFAULT_SIZE = 256


def body_of_size(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (at least 10)."""
    return b'{"x":"' + b"x" * max(0, size - 8) + b'"}'


def control_subject(prefix: str = ECHO_PREFIX) -> str:
    """Where the responder takes `{"endpoint": size, ...}` to change its reply sizes."""
    return f"{prefix}.control.sizes"


class EchoResponder:
    """A nats.micro service `bench-echo` on `{prefix}.u.*.sessions.[*.]{verb}`; `async with` runs it."""

    def __init__(self, nc: Client, prefix: str = ECHO_PREFIX, sizes: dict[str, int] | None = None) -> None:
        self.nc, self.prefix = nc, prefix
        self.replies: dict[str, bytes] = {}
        self.set_sizes(sizes or {})
        self.service: Service | None = None

    def set_sizes(self, sizes: dict[str, int]) -> None:
        """Reply with a body of sizes[verb] bytes (DEFAULT_SIZE for verbs not given)."""
        for verb in SESSION_VERBS + USER_VERBS:
            self.replies[verb] = body_of_size(int(sizes.get(verb, DEFAULT_SIZE)))

    async def start(self) -> None:
        self.service = await add_service(self.nc, name="bench-echo", version="1.0.0",
                                         description="docchat load-test floor")
        for verb in SESSION_VERBS:
            await self.service.add_endpoint(name=verb, subject=f"{self.prefix}.u.*.sessions.*.{verb}",
                                            handler=self.handler(verb))
        for verb in USER_VERBS:
            await self.service.add_endpoint(name=verb, subject=f"{self.prefix}.u.*.sessions.{verb}",
                                            handler=self.handler(verb))
        await self.service.add_endpoint(name="control", subject=control_subject(self.prefix),
                                        handler=self.control)

    def handler(self, verb: str) -> Any:
        async def handle(request: Request) -> None:
            await request.respond(self.replies[verb])

        return handle

    async def control(self, request: Request) -> None:
        try:
            self.set_sizes(json.loads(request.data))
            await request.respond(b'{"ok":true}')
        except (ValueError, TypeError, AttributeError) as exc:
            await request.respond_error("400", str(exc))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def __aenter__(self) -> "EchoResponder":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def set_sizes(nc: Client, sizes: dict[str, int], prefix: str = ECHO_PREFIX) -> None:
    """Tell a running responder (in any process) the reply size per endpoint."""
    await nc.request(control_subject(prefix), json.dumps(sizes).encode(), timeout=5)


async def serve(url: str, user: str, password: str, prefix: str) -> None:
    """Run the responder until SIGTERM/SIGINT; prints `ready` on stdout once it answers."""
    nc = await nats.connect(url, user=user, password=password, name="bench-echo")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with EchoResponder(nc, prefix):
        await flushed(nc)
        print("ready", flush=True)
        await stop.wait()
    await nc.close()


async def spawn_echo(url: str, user: str, password: str, prefix: str = ECHO_PREFIX) -> asyncio.subprocess.Process:
    """Start `python -m bench.echo` in its own process and wait until it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.echo", "--nats-url", url, "--user", user, "--prefix", prefix,
        env={**os.environ, "BENCH_ECHO_PASSWORD": password}, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    if line.strip() != b"ready":
        raise RuntimeError(f"echo responder did not start: {line!r}")
    return proc


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.echo`: run the responder in this process."""
    p = argparse.ArgumentParser(prog="bench.echo", description=__doc__)
    p.add_argument("--nats-url", required=True)
    p.add_argument("--user", default="docchat")
    p.add_argument("--prefix", default=ECHO_PREFIX)
    args = p.parse_args(argv)
    password = os.environ.get("BENCH_ECHO_PASSWORD") or os.environ.get("DOCCHAT_SERVICE_PASSWORD", "docchat-dev")
    asyncio.run(serve(args.nats_url, args.user, password, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
