"""Real docchat processes for the reliability tests: start `docchat serve` / `docchat assistant`, kill -9 them.

    proc = await DocchatProcess.serve(nats_url, db_path, DOCCHAT_OFFLINE_DELAY_SECONDS="0.05")
    await proc.ready(nc)          # answers requests
    await proc.kill()             # SIGKILL, no shutdown code runs
    proc.rss_bytes()              # its resident memory now
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from contracts.client import AdminClient
from contracts.errors import DocchatError
from contracts.models import Message
from tests.conftest import SERVICE_PASSWORD

ROOT = Path(__file__).resolve().parent.parent

# Small leases and sweeps, so a vanished worker's reply is taken over within seconds, not minutes.
FAST = {
    "DOCCHAT_REPLY_LEASE_SECONDS": "1",
    "DOCCHAT_STUCK_REPLY_SECONDS": "1.5",
    "DOCCHAT_DELTA_INTERVAL_MS": "10",
    "DOCCHAT_MODEL_RETRIES": "0",
    "DOCCHAT_LOG_LEVEL": "warning",
}


def base_env(nats_url: str, db_path: Path, **extra: str) -> dict[str, str]:
    data_dir = db_path.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCCHAT_")}
    env.update({"PYTHONUNBUFFERED": "1", "DOCCHAT_NATS_URL": nats_url, "DOCCHAT_SERVICE_PASSWORD": SERVICE_PASSWORD,
                "DOCCHAT_DB_PATH": str(db_path), "DOCCHAT_DATA_DIR": str(data_dir), "DOCCHAT_RUN_CALLOUT": "false",
                "DOCCHAT_MODEL_PROVIDER": "offline", **FAST})
    env.update(extra)
    return env


@dataclass
class DocchatProcess:
    """One `python -m actors <command>` child process."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, command: str, nats_url: str, db_path: Path, **extra: str) -> "DocchatProcess":
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", command,
                                                    env=base_env(nats_url, db_path, **extra), cwd=ROOT,
                                                    stdout=asyncio.subprocess.DEVNULL)
        return cls(proc)

    @classmethod
    async def serve(cls, nats_url: str, db_path: Path, **extra: str) -> "DocchatProcess":
        return await cls.start("serve", nats_url, db_path, **extra)

    @classmethod
    async def assistant(cls, nats_url: str, db_path: Path, **extra: str) -> "DocchatProcess":
        return await cls.start("assistant", nats_url, db_path, **extra)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, nc: Client, timeout: float = 20.0) -> None:
        """Wait until the service answers a (harmless, idempotent) admin request."""
        admin = AdminClient(nc, timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"docchat exited with {self.proc.returncode}")
            try:
                await admin.grant("readiness-probe", "probe")
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, DocchatError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM: a clean shutdown (partitions handed over); SIGKILL if it takes longer than timeout."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()
            raise

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or the OOM killer."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def check_history(history: list[Message], acked: dict[str, int]) -> None:
    """PROTOCOL.md's guarantees about one session's history after any crash:

    seq is 1..n with no gap or repeat; messages come in (user, assistant) pairs, each assistant
    message answering the user message just before it; every acknowledged send (user message id →
    seq) is there at its seq; every reply has ended: complete, or failed with an error.
    """
    assert [m.seq for m in history] == list(range(1, len(history) + 1)), "seq has gaps or repeats"
    assert len({m.id for m in history}) == len(history), "a message is stored twice"
    by_id = {m.id: m for m in history}
    for mid, seq in acked.items():
        assert mid in by_id, f"acknowledged send {mid} (seq {seq}) is lost"
        assert by_id[mid].seq == seq
    assert len(history) % 2 == 0
    for user, reply in zip(history[::2], history[1::2]):
        assert user.role == "user" and user.status == "complete"
        assert reply.role == "assistant" and reply.reply_to == user.id, "a send has not exactly one reply"
        assert reply.status in ("complete", "failed"), f"reply {reply.id} is stuck {reply.status}"
        if reply.status == "failed":
            assert reply.error is not None and reply.error.code
    replies_to = [m.reply_to for m in history if m.role == "assistant"]
    assert len(replies_to) == len(set(replies_to)), "one send got two replies"


async def wait_settled(client, sid: str, timeout: float = 20.0) -> list[Message]:
    """The session's history once no reply is pending or streaming (or the last one read at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        history = (await client.messages(sid, limit=500)).messages
        if all(m.status not in ("pending", "streaming") for m in history) or time.monotonic() > deadline:
            return history
        await asyncio.sleep(0.1)
