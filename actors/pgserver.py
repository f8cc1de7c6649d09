"""A throwaway PostgreSQL server for tests, the local cluster and the scaling bench: initdb in a temp dir, a free port, `pg_ctl -m immediate stop`.

initdb refuses to run as root, so as root (CI) both run as the `postgres` user via runuser; the temp
dir sits in /tmp (pytest's own tmp dirs are 0700 root) and is owned by that user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg


def bin_dir() -> Path | None:
    """Debian keeps initdb and pg_ctl off PATH, in /usr/lib/postgresql/<version>/bin: the newest one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """`with PgServer() as pg:` a running server; `pg.url(db)` is its postgresql:// URL for database db."""

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync  # off by default: tests need speed, not durability across an OS crash
        self.bin = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="docchat-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, tool: str, *args: str) -> None:
        assert self.bin is not None
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, cwd=self.dir)

    def start(self) -> None:
        if self.as_user:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = str(self.dir / "data")
        self.run("initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
        self.launch()

    def launch(self) -> None:
        """Start the initialised server (again, after `kill`)."""
        # fsync=off (the default) only makes the tests fast; synchronous_commit stays on as the store demands.
        fsync = "on" if self.fsync else "off"
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "start", "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=200")

    def kill(self) -> None:
        """Stop at once, as a crash would (no shutdown checkpoint)."""
        if (self.dir / "data" / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> "PgServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


DATABASES = itertools.count(1)


async def new_database(server: PgServer) -> str:
    """A fresh empty database on the server; its URL."""
    name = f"t{next(DATABASES)}"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return server.url(name)
