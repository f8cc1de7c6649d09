"""`docchat` command line: `serve` runs the whole service; the rest are dev and operator tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import structlog

from .logs import configure
from .settings import Settings, from_env

log = structlog.get_logger("main")


async def serve(settings: Settings) -> None:
    """Start nats-server (unless DOCCHAT_NATS_URL is set) and every docchat part; stop on SIGINT/SIGTERM."""
    from gateway.keys import load_keys, server_env

    from .host import running
    from .natsserver import EmbeddedNats

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        url = settings.nats_url
        if not url:
            keys = load_keys(settings)
            server = EmbeddedNats(
                store_dir=Path(settings.data_dir) / "jetstream", host=settings.nats_host, port=settings.nats_port,
                ws_port=settings.nats_ws_port, http_port=settings.nats_http_port,
                service_password=settings.service_password,
                extra_env=server_env(keys, settings.callout_password))
            await stack.enter_async_context(server)
            url = server.url
        await stack.enter_async_context(running(settings, url))
        if not settings.nats_url:  # dev mode: the browser page, next to the websocket listener
            from gateway.web_server import WEB_DIST, WebServer

            web = await stack.enter_async_context(WebServer(
                settings.nats_host, settings.web_port, WEB_DIST, f"ws://{{host}}:{settings.nats_ws_port}"))
            log.info("web_page", url=web.url, token_hint="docchat token <sub>; docchat grant <doc> <sub>")
        freeze_startup_heap()
        log.info("serving", nats=url, hint="Ctrl-C stops")
        await stop.wait()
        log.info("shutting_down")
    log.info("stopped")


def freeze_startup_heap() -> None:
    """Keep what start-up made (modules, SDK clients, settings) out of every later collection.

    Measured here under send load, a full collection walked that whole heap and stalled the event
    loop for about 110 ms, the largest of the latency spikes; gc.freeze() leaves those objects to
    the permanent generation, so a full collection walks only what requests made."""
    gc.collect()
    gc.freeze()


async def assistant_only(settings: Settings) -> None:
    """Run only the assistant (another process, same NATS and database) until SIGINT/SIGTERM."""
    from .assistant.service import Assistant
    from .host import close, connect
    from .store import open_store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = settings.nats_url or f"nats://{settings.nats_host}:{settings.nats_port}"
    async with AsyncExitStack() as stack:
        nc = await connect(settings, url, "docchat-assistant")
        stack.push_async_callback(close, nc)
        store = await stack.enter_async_context(open_store(settings))
        await stack.enter_async_context(Assistant(nc, store, settings))
        freeze_startup_heap()
        await stop.wait()


async def grant(settings: Settings, document_id: str, sub: str, role: str, revoke: bool) -> None:
    """Grant or revoke a user's access to a document on a running service."""
    from contracts.client import AdminClient

    from .host import connect

    nc = await connect(settings, settings.nats_url or f"nats://{settings.nats_host}:{settings.nats_port}", "docchat-admin")
    try:
        admin = AdminClient(nc)
        if revoke:
            await admin.revoke(document_id, sub)
        else:
            await admin.grant(document_id, sub, role)
    finally:
        await nc.close()
    print("ok")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="docchat", description=__doc__)
    p.add_argument("--nats-url", help="use this NATS server instead of starting one (DOCCHAT_NATS_URL)")
    p.add_argument("--data-dir", help="where SQLite and JetStream keep their files (DOCCHAT_DATA_DIR)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the whole service on embedded defaults")
    sub.add_parser("assistant", help="run only the assistant, against a running service's NATS and database")
    t = sub.add_parser("token", help="print a dev application JWT for a user (the dev secret of --data-dir)")
    t.add_argument("sub")
    t.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    c = sub.add_parser("cluster", help="a local demo: 3 NATS nodes, PostgreSQL and N hosts sharing it")
    c.add_argument("--hosts", type=int, default=2)
    sub.add_parser("load", help="drive a running docchat with load and compare to the NATS echo floor (see --help)")
    sub.add_parser("bench-sessions", help="create many sessions, let them idle, measure RSS and re-activation")
    sub.add_parser("bench-scale", help="1, 2, 4 CPU-capped hosts on 3 NATS nodes and PostgreSQL: T(N)/(N·T(1))")
    g = sub.add_parser("grant", help="grant (or --revoke) a user's access to a document")
    g.add_argument("document_id")
    g.add_argument("sub")
    g.add_argument("--role", default="editor", choices=["owner", "editor", "viewer"])
    g.add_argument("--revoke", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("load", "bench-sessions", "bench-scale"):  # the load tools parse their own options
        from bench.cli import main as bench_main

        return bench_main(argv)
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in {"nats_url": args.nats_url, "data_dir": args.data_dir}.items() if v}
    try:
        settings = from_env(**overrides)
    except msgspec.ValidationError as exc:
        print(f"docchat: bad setting: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    from gateway.devtoken import mint_for, with_dev_secret

    settings = with_dev_secret(settings)
    if args.command == "serve":
        asyncio.run(serve(settings))
    elif args.command == "cluster":
        from .localcluster import run_cluster

        asyncio.run(run_cluster(settings, args.hosts))
    elif args.command == "assistant":
        asyncio.run(assistant_only(settings))
    elif args.command == "token":
        print(mint_for(settings, args.sub, args.ttl))
    elif args.command == "grant":
        asyncio.run(grant(settings, args.document_id, args.sub, args.role, args.revoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
