"""A local N-node nats-server cluster (JetStream clustered) built from EmbeddedNats, for tests and demos."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .natsserver import CONF, EmbeddedNats

log = structlog.get_logger("natscluster")
CLUSTER_NAME = "docchat"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports nobody listens on right now (all bound at once, so no repeats)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def cluster_conf(cluster_port: int, route_ports: list[int], host: str = "127.0.0.1") -> str:
    """nats.conf plus a `cluster` block listening on `cluster_port` and routing to every node."""
    routes = ", ".join(f"nats-route://{host}:{p}" for p in route_ports)
    block = f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: {host}:{cluster_port}\n  routes: [{routes}]\n}}\n"
    return f"{CONF.read_text()}\n{block}"


@dataclass
class NatsCluster:
    """`size` routed EmbeddedNats nodes (docchat-1..N, stores and configs under `root`); `async with` starts
    them and waits until every node is healthy and knows a JetStream meta leader. Node indexes are 0-based."""

    root: Path
    size: int = 3
    service_password: str = "docchat-dev"
    extra_env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    ready_timeout: float = 30.0
    nodes: list[EmbeddedNats] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes, in node order."""
        return [n.url for n in self.nodes]

    servers = urls  # the name nats.connect(servers=...) uses

    @property
    def url(self) -> str:
        """All client URLs comma-joined (for settings); nats-py does not split it: connect with `servers`."""
        return ",".join(self.urls)

    @property
    def ws_urls(self) -> list[str]:
        """Websocket URLs of all nodes, in node order."""
        return [n.ws_url for n in self.nodes]

    async def start(self) -> None:
        """Write the configs, start all nodes concurrently and wait until the cluster is ready."""
        if self.nodes:
            return
        ports = free_ports(4 * self.size, self.host)
        client, ws, http, route = (ports[k * self.size:(k + 1) * self.size] for k in range(4))
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            name = f"docchat-{i + 1}"
            conf = self.root / f"{name}.conf"
            conf.write_text(cluster_conf(route[i], route, self.host))
            self.nodes.append(EmbeddedNats(store_dir=self.root / name, host=self.host, port=client[i], ws_port=ws[i],
                                           http_port=http[i], service_password=self.service_password, name=name,
                                           extra_env=dict(self.extra_env), conf=conf))
        try:
            await asyncio.gather(*(n.start() for n in self.nodes))
            await self.wait_ready()
        except BaseException:
            await self.stop()
            self.nodes.clear()
            raise
        log.info("nats_cluster_ready", urls=self.urls)

    async def stop(self) -> None:
        """Stop every node; idempotent."""
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)

    async def kill(self, i: int) -> None:
        """SIGKILL node i (a crash: no clean shutdown, no leadership hand-off)."""
        await self.nodes[i].kill()

    async def stop_node(self, i: int) -> None:
        """Stop node i gracefully (SIGTERM)."""
        await self.nodes[i].stop()

    async def start_node(self, i: int) -> None:
        """Restart node i on its old ports and store dir and wait until it has rejoined."""
        await self.nodes[i].start()
        await self.wait_ready([i])

    def running(self) -> list[int]:
        """Indexes of the nodes whose process is up."""
        return [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.returncode is None]

    async def monitor(self, i: int, path: str) -> tuple[int, dict[str, Any]]:
        """GET node i's monitoring endpoint `path`: (HTTP status or 0 if unreachable, JSON body or {})."""
        url = f"http://{self.host}:{self.nodes[i].http_port}{path}"

        def get() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return r.status, json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as e:
                return e.code, {}
            except (OSError, ValueError):
                return 0, {}

        return await asyncio.to_thread(get)

    async def node_ready(self, i: int) -> bool:
        """Node i has JetStream enabled (/healthz) and knows a meta leader of a full-size meta group (/jsz)."""
        status, _ = await self.monitor(i, "/healthz?js-enabled-only=true")
        if status != 200:
            return False
        _, jsz = await self.monitor(i, "/jsz")
        meta = jsz.get("meta_cluster") or {}
        return bool(meta.get("leader")) and meta.get("cluster_size", 0) >= self.size

    async def wait_ready(self, indexes: list[int] | None = None, timeout: float | None = None) -> None:
        """Wait until node_ready holds for `indexes` (default: all running nodes)."""
        indexes = self.running() if indexes is None else indexes
        async with asyncio.timeout(timeout or self.ready_timeout):
            while not all(await asyncio.gather(*(self.node_ready(i) for i in indexes))):
                await asyncio.sleep(0.1)

    async def stream_leader(self, stream: str, timeout: float = 15.0) -> int:
        """Index of the running node that leads JetStream stream `stream` (waits through an election)."""
        names = {n.name: i for i, n in enumerate(self.nodes)}
        async with asyncio.timeout(timeout):
            while True:
                for i in self.running():
                    _, jsz = await self.monitor(i, "/jsz?accounts=true&streams=true")
                    for account in jsz.get("account_details") or []:
                        for detail in account.get("stream_detail") or []:
                            leader = names.get((detail.get("cluster") or {}).get("leader", ""))
                            if detail.get("name") == stream and leader in self.running():
                                return leader
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> "NatsCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
