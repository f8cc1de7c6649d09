"""`docchat cluster`: a local multi-host deployment for a demo (and the scaling benchmark).

A 3-node NATS cluster (nats.conf plus a cluster block each), a throwaway PostgreSQL, and N `docchat
serve` hosts sharing that database, each owning its share of the 64 user partitions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import structlog

from .natscluster import NatsCluster
from .pgserver import PgServer
from .settings import Settings

log = structlog.get_logger("cluster")
ROOT = Path(__file__).resolve().parent.parent


def host_env(settings: Settings, nats_url: str, store_url: str, name: str, **extra: str) -> dict[str, str]:
    """The environment of one `docchat serve` host of the local cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCCHAT_")}
    env.update({"DOCCHAT_NATS_URL": nats_url, "DOCCHAT_STORE_URL": store_url, "DOCCHAT_HOST_ID": name,
                "DOCCHAT_STREAM_REPLICAS": "3", "DOCCHAT_SERVICE_PASSWORD": settings.service_password,
                "DOCCHAT_CALLOUT_PASSWORD": settings.callout_password, "DOCCHAT_DATA_DIR": settings.data_dir,
                "DOCCHAT_MODEL_PROVIDER": settings.model_provider, "DOCCHAT_LOG_LEVEL": settings.log_level,
                "PYTHONUNBUFFERED": "1", **extra})
    return env


async def start_host(settings: Settings, nats_url: str, store_url: str, name: str,
                     **extra: str) -> asyncio.subprocess.Process:
    """Start `python -m actors serve` as host `name`."""
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", "serve", cwd=ROOT,
                                                env=host_env(settings, nats_url, store_url, name, **extra))


async def stop_child(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    """SIGTERM a child process (a host hands its partitions over), SIGKILL it after timeout, and reap it."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def run_cluster(settings: Settings, hosts: int) -> None:
    """Run the local deployment until SIGINT/SIGTERM, then stop hosts, NATS and PostgreSQL in that order."""
    from gateway.keys import load_keys, server_env

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    root = Path(settings.data_dir) / "cluster"
    async with AsyncExitStack() as stack:
        pg = PgServer()
        await asyncio.to_thread(pg.start)
        stack.callback(pg.stop)
        nats = await stack.enter_async_context(NatsCluster(
            root / "nats", service_password=settings.service_password,
            extra_env=server_env(load_keys(settings), settings.callout_password)))
        procs = [await start_host(settings, nats.url, pg.url(), f"host-{i + 1}") for i in range(hosts)]
        for proc in procs:
            stack.push_async_callback(stop_child, proc)
        log.info("cluster_running", nats=nats.urls, websocket=nats.ws_urls, postgres=pg.url(),
                 hosts=[p.pid for p in procs],
                 hint=f"DOCCHAT_NATS_URL={nats.url} docchat grant <doc> <sub>; Ctrl-C stops")
        await stop.wait()
        log.info("cluster_stopping")
