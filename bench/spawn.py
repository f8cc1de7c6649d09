"""`--spawn`: a fresh nats-server and a `docchat serve --nats-url` subprocess, for one bench command.

The service runs the offline model with its data in a temporary directory; its pid is known, so
the bench can read its RSS.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from actors.localcluster import stop_child
from actors.natsserver import EmbeddedNats
from contracts.subjects import USAGE
from gateway.keys import CalloutKeys, server_env



@dataclass(frozen=True)
class Endpoint:
    """Where and as whom the bench connects, and the service's pid when it is known."""

    url: str
    user: str
    password: str
    service_pid: int | None = None
    server_pid: int | None = None


def service_env(data_dir: Path, password: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of the spawned `docchat serve`."""
    return {**os.environ, "DOCCHAT_MODEL_PROVIDER": "offline", "DOCCHAT_DATA_DIR": str(data_dir),
            "DOCCHAT_RUN_CALLOUT": "false", "DOCCHAT_SERVICE_PASSWORD": password,
            "DOCCHAT_LOG_LEVEL": "warning", **extra}


async def wait_ready(url: str, user: str, password: str, proc: asyncio.subprocess.Process,
                     timeout: float = 60) -> None:
    """Until the admin service answers a usage report (it starts after every partition's); raises if
    the service exits first."""
    nc = await nats.connect(url, user=user, password=password, name="bench-probe")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"docchat serve exited with {proc.returncode}")
            try:
                await nc.request(USAGE, b'{"userId": "readiness-probe"}', timeout=0.5)
                return
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.2)
        raise RuntimeError("docchat serve did not answer within the timeout")
    finally:
        await nc.close()


@asynccontextmanager
async def spawned(extra_env: dict[str, str] | None = None, keep: bool = False) -> AsyncIterator[Endpoint]:
    """Start nats-server and `docchat serve`; stop both on exit (the temp dir is removed unless keep)."""
    tmp = Path(tempfile.mkdtemp(prefix="docchat-bench-"))
    password = "bench-" + secrets.token_hex(8)
    server = EmbeddedNats(store_dir=tmp / "jetstream", service_password=password,
                          extra_env=server_env(CalloutKeys.create(), "callout-" + secrets.token_hex(8)))
    async with server:
        data = tmp / "data"
        data.mkdir()
        logfile = open(tmp / "docchat.log", "wb")  # noqa: SIM115 - closed below, after the child exits
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "actors", "--nats-url", server.url, "--data-dir", str(data), "serve",
            env=service_env(data, password, extra_env or {}), stdout=logfile, stderr=logfile,
            start_new_session=True)
        try:
            try:
                await wait_ready(server.url, "docchat", password, proc)
            except RuntimeError:
                logfile.flush()
                tail = (tmp / "docchat.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"docchat serve did not start; its log ends:\n{tail}") from None
            print(f"spawned nats-server {server.url} and docchat serve pid {proc.pid} (data {tmp})",
                  file=sys.stderr, flush=True)
            yield Endpoint(server.url, "docchat", password, proc.pid, server.proc.pid if server.proc else None)
        finally:
            await stop_child(proc, timeout=30)
            logfile.close()
            if not keep:
                shutil.rmtree(tmp, ignore_errors=True)


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of a process in KiB from /proc/<pid>/status, or None when unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (from /proc/<pid>/stat), or None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU cores each named process used between `start()` and `stop()` (shows a noisy or saturated box)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.begin: dict[str, float | None] = {}
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.begin = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        out = {}
        for name, pid in self.pids.items():
            end, begin = cpu_seconds(pid), self.begin.get(name)
            if end is not None and begin is not None:
                out[name] = round((end - begin) / wall, 2)
        return out


async def wait_cpu_idle(pid: int | None, timeout: float, below: float = 0.05, window: float = 0.5) -> float:
    """Wait until the process uses under `below` cores over a `window`, at most timeout; seconds waited."""
    start = time.perf_counter()
    while pid is not None and time.perf_counter() - start < timeout:
        meter = CpuMeter({"p": pid})
        meter.start()
        await asyncio.sleep(window)
        if meter.stop().get("p", 0.0) < below:
            break
    return time.perf_counter() - start
