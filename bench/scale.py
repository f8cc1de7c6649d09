"""`docchat bench-scale`: 1, 2, 4 docchat hosts on one 3-node NATS cluster and PostgreSQL, each host CPU-capped.

Each host runs in its own cgroup (v1 cpu controller) capped at `--cpu-share` of a core, so that
T(N)/(N·T(1)) means something on a 2-core machine (SCALE-OUT.md §4); loadgen, NATS and PostgreSQL
stay uncapped. A run is valid only if every host was throttled and at least 0.3 core stayed idle.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client

from actors.localcluster import ROOT, host_env, stop_child
from actors.natscluster import NatsCluster
from actors.pgserver import PgServer
from actors.settings import Settings
from contracts.client import AdminClient
from contracts.subjects import PARTITIONS, REPLY_STREAM, partition_of
from gateway.keys import CalloutKeys, server_env

from .load import Load, LoadConfig, log
from .spawn import cpu_seconds

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
MIN_IDLE_CORES = 0.3
TICKS = os.sysconf("SC_CLK_TCK")
BACKLOG = "SELECT count(*) FROM messages WHERE role = 'assistant' AND status IN ('pending', 'streaming')"


@dataclass
class ScaleConfig:
    """What one `bench-scale` command runs."""

    hosts: list[int] = field(default_factory=lambda: [1, 2, 4])
    reps: int = 3
    duration: float = 10.0
    warmup: float = 2.0
    concurrency: int = 64
    per_host: bool = False  # concurrency is per host: N hosts get N × concurrency workers
    users: int = 1024
    cpu_share: float = 0.2
    assistant: bool = True
    pg_fsync: bool = True
    timeout: float = 5.0
    progress: bool = True


def proc_table() -> dict[int, tuple[int, int]]:
    """pid → (ppid, utime+stime+cutime+cstime ticks) of every process, from /proc/<pid>/stat."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError):
                f = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(f[1]), sum(int(x) for x in f[11:15]))
    return table


def tree_cpu(root: int, table: dict[int, tuple[int, int]]) -> float:
    """CPU seconds of `root` and its live descendants, plus the children they reaped (so exits lose nothing)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
            todo.extend(children.get(pid, []))
    return total / TICKS


def machine_ticks() -> tuple[int, int, int]:
    """(idle+iowait ticks, all ticks, cpu count) of the machine, from /proc/stat."""
    lines = Path("/proc/stat").read_text().splitlines()
    f = [int(x) for x in lines[0].split()[1:9]]
    return f[3] + f[4], sum(f), sum(1 for line in lines if line[:3] == "cpu" and line[3:4].isdigit())


def cgroup_problem() -> str | None:
    """Why per-host cgroup v1 cpu caps cannot be made here, or None when they can."""
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CGROUP_CPU}"
    return None if os.access(CGROUP_CPU, os.W_OK) else f"{CGROUP_CPU} is not writable (run as root)"


class CpuGroup:
    """A cgroup v1 cpu group capped at `share` of one core (cfs quota per 100 ms period)."""

    def __init__(self, name: str, share: float) -> None:
        self.path = CGROUP_CPU / name
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(share * PERIOD_US)))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def uncap(self) -> None:
        (self.path / "cpu.cfs_quota_us").write_text("-1")

    def throttled(self) -> int:
        return int(dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())["nr_throttled"])

    def remove(self) -> None:
        """Move any process left back to the root group, then delete the group."""
        with suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
        for _ in range(50):
            try:
                return self.path.rmdir()
            except FileNotFoundError:
                return None
            except OSError:
                time.sleep(0.1)
        log(f"could not remove cgroup {self.path}")


@dataclass
class Host:
    """One `docchat serve` child, its log file and its cgroup."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    group: CpuGroup | None = None

    def summary(self) -> dict[str, str]:
        """`level event` → `×count: first detail` of its log lines (warning and above)."""
        found: Counter[str] = Counter()
        first: dict[str, str] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
                key, detail = f"{event.pop('level', '?')} {event.pop('event', '?')}", event.get("error") or event
            except (ValueError, AttributeError):
                key, detail = "text", line
            found[key] += 1
            first.setdefault(key, str(detail)[:160])
        return {k: f"×{n}: {first[k]}" for k, n in found.most_common()}


async def start_host(settings: Settings, nats_url: str, store_url: str, name: str, root: Path,
                     assistant: bool) -> Host:
    """`python -m actors serve` as host `name` (callout off, offline model), logging to root/name.log."""
    (root / name).mkdir()
    env = host_env(settings, nats_url, store_url, name, DOCCHAT_RUN_CALLOUT="false",
                   DOCCHAT_RUN_ASSISTANT=str(assistant).lower(), DOCCHAT_DATA_DIR=str(root / name))
    with open(root / f"{name}.log", "wb") as out:  # noqa: ASYNC230 - a local file, opened once per host
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", "serve", cwd=ROOT, env=env,
                                                    stdout=out, stderr=asyncio.subprocess.STDOUT)
    return Host(name, proc, root / f"{name}.log")


async def wait_spread(db: asyncpg.Connection, nc: Client, hosts: list[Host], timeout: float = 90.0) -> dict[int, str]:
    """Partition → owner once all 64 are held evenly by exactly these hosts and a grant is answered."""
    names, share = {h.name for h in hosts}, math.ceil(PARTITIONS / len(hosts))
    deadline, counts = time.monotonic() + timeout, Counter[str]()
    while time.monotonic() < deadline:
        if exited := [f"{h.name} exited with {h.proc.returncode} (log {h.log})" for h in hosts
                  if h.proc.returncode is not None]:
            raise RuntimeError("; ".join(exited))
        with suppress(asyncpg.PostgresError):  # the schema may not exist yet
            owners = dict(await db.fetch("SELECT p, owner FROM partition_lease"
                                         " WHERE owner IS NOT NULL AND expires_at > clock_timestamp()"))
            counts = Counter(owners.values())
            if len(owners) == PARTITIONS and set(counts) == names and max(counts.values()) <= share:
                with suppress(Exception):  # a host takes partitions before it subscribes the admin endpoints
                    await AdminClient(nc, 1.0).grant("bench-probe", "bench-probe")
                    return owners
        await asyncio.sleep(0.2)
    raise RuntimeError(f"partitions not spread over {sorted(names)} (or no grant answered) in {timeout:.0f}s: "
                       f"{dict(counts)}")


class Bench:
    """The shared PostgreSQL, NATS cluster and load connection; `run(n, rep)` measures N fresh hosts."""

    def __init__(self, cfg: ScaleConfig, root: Path, settings: Settings, pg: PgServer, cluster: NatsCluster,
                 nc: Client) -> None:
        self.cfg, self.root, self.settings, self.pg, self.cluster, self.nc = cfg, root, settings, pg, cluster, nc

    def sample(self, hosts: list[Host]) -> dict[str, Any]:
        """CPU seconds of every host, NATS node, PostgreSQL and the loadgen, throttle counts and machine ticks."""
        table = proc_table()
        return {"hosts": {h.name: tree_cpu(h.proc.pid, table) for h in hosts},
                "nats": {n.name: tree_cpu(n.proc.pid, table) for n in self.cluster.nodes if n.proc},
                "pg": tree_cpu(int((self.pg.dir / "data" / "postmaster.pid").read_text().split()[0]), table),
                "loadgen": cpu_seconds(os.getpid()) or 0.0, "machine": machine_ticks(), "t": time.perf_counter(),
                "throttled": {h.name: h.group.throttled() for h in hosts if h.group}}

    async def run(self, n: int, rep: int) -> dict[str, Any]:
        """Fresh database and N hosts, partitions spread, sessions warmed, caps on, warm-up, one measured window."""
        tag, cfg, hosts = f"r{rep + 1}n{n}", self.cfg, []
        concurrency = cfg.concurrency * (n if cfg.per_host else 1)
        base = LoadConfig(users=cfg.users, sessions_per_user=1, concurrency=concurrency, warmup=0,
                          mix={"send": 1.0}, timeout=cfg.timeout, events=False, progress=False)
        load = Load(self.nc, replace(base, prefill=1))  # setup sends once to every session: no cold first sends
        admin = await asyncpg.connect(self.pg.url())
        try:
            await admin.execute(f"CREATE DATABASE {tag}")
            for i in range(n):
                hosts.append(await start_host(self.settings, self.cluster.url, self.pg.url(tag), f"{tag}h{i + 1}",
                                              self.root, cfg.assistant))
            db = await asyncpg.connect(self.pg.url(tag))
            try:
                started = time.monotonic()
                owners = await wait_spread(db, self.nc, hosts)
                quiet = self.sample(hosts)
                await asyncio.sleep(2.0)  # what the deployment burns with no load (leases, polling), uncapped
                idle = cores(quiet, self.sample(hosts))
                log(f"[{tag}] {n} host(s) own the {PARTITIONS} partitions after {time.monotonic() - started:.1f}s; "
                    f"cores used without load: {idle}; setting up {cfg.users} sessions")
                await load.setup()
                deadline = time.monotonic() + 30  # let the replies to the setup sends finish, uncapped
                while cfg.assistant and await db.fetchval(BACKLOG) and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                for h in hosts if cfg.cpu_share > 0 else []:
                    h.group = CpuGroup(f"docchat-bench-{os.getpid()}-{h.name}", cfg.cpu_share)
                    h.group.add(h.proc.pid)
                if cfg.warmup:
                    load.cfg = replace(base, duration=cfg.warmup)
                    await load.run()
                backlog, before = await db.fetchval(BACKLOG), self.sample(hosts)
                load.cfg = replace(base, duration=cfg.duration, progress=cfg.progress)
                report = await load.run()
                after, backlog = self.sample(hosts), await db.fetchval(BACKLOG) - backlog
            finally:
                await db.close()
            exited = {h.name: h.proc.returncode for h in hosts if h.proc.returncode is not None}
        finally:
            for h in hosts:
                if h.group:
                    h.group.uncap()  # a capped host would hand its partitions over slowly
            await asyncio.gather(*(stop_child(h.proc) for h in hosts))
            for h in hosts:
                if h.group:
                    h.group.remove()
            await load.close()
            with suppress(Exception):
                await self.nc.jetstream().delete_stream(REPLY_STREAM)  # no leftover replies for the next run
            with suppress(asyncpg.PostgresError):
                await admin.execute(f"DROP DATABASE {tag} WITH (FORCE)")
            await admin.close()
        logs = {h.name: h.summary() for h in hosts}
        for name, key, seen in ((name, k, v) for name, found in logs.items() for k, v in found.items()):
            log(f"[{tag}] {name} log: {key} {seen}")
        shares = Counter(owners[partition_of(t.uid)] for t in load.targets)
        return measure(tag, n, base.concurrency, report, before, after, shares, backlog, exited) | {
            "cores_without_load": idle, "host_logs": logs}


def cores(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Cores used between two samples by all hosts, all NATS nodes and PostgreSQL."""
    used = {k: sum(after[k].values()) - sum(before[k].values()) for k in ("hosts", "nats")} | {
        "pg": after["pg"] - before["pg"]}
    return {k: round(v / (after["t"] - before["t"]), 3) for k, v in used.items()}


def measure(tag: str, n: int, concurrency: int, report: dict[str, Any], before: dict[str, Any],
            after: dict[str, Any], shares: Counter[str], backlog: int, exited: dict[str, int]) -> dict[str, Any]:
    """One run's figures: sends/s, latency, CPU µs per send, throttling, idle cores, validity."""
    send = report["endpoints"].get("send", {"count": 0})
    sends, wall, sessions = send["count"], after["t"] - before["t"], sum(shares.values())

    def us(cpu: float, share: float = 1.0) -> float | None:
        return round(cpu / (sends * share) * 1e6, 1) if sends and share else None

    host_cpu = {h: after["hosts"][h] - before["hosts"][h] for h in after["hosts"]}
    idle, total = (a - b for a, b in zip(after["machine"][:2], before["machine"][:2]))
    throttled = {h: after["throttled"][h] - before["throttled"][h] for h in after["throttled"]}
    run = {"run": tag, "n": n, "concurrency": concurrency, "sends": sends, "sends_per_s": send.get("rps", 0.0),
           "p50_ms": send.get("p50_ms"), "p99_ms": send.get("p99_ms"), "errors": report["errors"].get("send", {}),
           "wall_s": round(wall, 2), "host_cores": {h: round(c / wall, 3) for h, c in host_cpu.items()},
           "host_session_share": {h: round(shares[h] / sessions, 3) for h in host_cpu},
           "host_us_per_send": {h: us(c, shares[h] / sessions) for h, c in host_cpu.items()},  # its CPU / its sends
           "hosts_us_per_send": us(sum(host_cpu.values())),
           "nats_us_per_send": us(sum(after["nats"].values()) - sum(before["nats"].values())),
           "pg_us_per_send": us(after["pg"] - before["pg"]),
           "loadgen_cores": round((after["loadgen"] - before["loadgen"]) / wall, 2),
           "nr_throttled": throttled, "idle_cores": round(idle / max(total, 1) * after["machine"][2], 2),
           "replies_behind": round(backlog / sends, 2) if sends else None, "hosts_exited": exited}
    why = [f"{h} exited with {rc}" for h, rc in exited.items()]
    why += ["no cgroup cap"] if not throttled else [] if all(throttled.values()) else ["a host was not throttled"]
    why += [f"idle < {MIN_IDLE_CORES} core"] if run["idle_cores"] < MIN_IDLE_CORES else []
    run["valid"], run["why"] = not why, why
    log(f"[{tag}] {run['sends_per_s']:.0f} sends/s, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, host cores "
        f"{run['host_cores']}, throttled {throttled}, idle {run['idle_cores']}, errors {run['errors'] or 'none'}")
    return run


COLUMNS = ("sends_per_s", "p50_ms", "p99_ms", "host_us_per_send", "hosts_us_per_send", "nats_us_per_send",
           "pg_us_per_send", "idle_cores", "loadgen_cores", "replies_behind")


def summarize(runs: list[dict[str, Any]], hosts: list[int]) -> list[dict[str, Any]]:
    """One row per N: medians over reps (per-host µs/send: mean over hosts first), errors summed, T(N)/(N·T(1))."""
    rows = []
    for n in hosts:
        rs = [r | {"host_us_per_send": statistics.fmean(v) if (v := [x for x in r["host_us_per_send"].values()
                                                                      if x is not None]) else None}
              for r in runs if r["n"] == n]
        row: dict[str, Any] = {"n": n, "reps": len(rs)}
        for key in COLUMNS:
            values = [r[key] for r in rs if r[key] is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        row["throttled_ok"] = all(all(r["nr_throttled"].values()) for r in rs) if all(
            r["nr_throttled"] for r in rs) else None
        row["valid"], row["why"] = all(r["valid"] for r in rs), sorted({w for r in rs for w in r["why"]})
        row["errors"] = dict(sum((Counter(r["errors"]) for r in rs), Counter()))
        rows.append(row)
    t1 = next((r["sends_per_s"] for r in rows if r["n"] == 1), None)
    for row in rows:
        row["scaling"] = round(row["sends_per_s"] / (row["n"] * t1), 3) if t1 and row["sends_per_s"] else None
    return rows


def format_table(rows: list[dict[str, Any]], cfg: ScaleConfig) -> str:
    """The result table, one line per N, a legend, and errors."""
    cap = f"each host capped at {cfg.cpu_share:g} core" if cfg.cpu_share > 0 else "hosts uncapped"
    out = [(f"== bench-scale: {cap}, PostgreSQL fsync={'on' if cfg.pg_fsync else 'off'}, assistant "
            f"{'on' if cfg.assistant else 'off'}, C={cfg.concurrency}{' per host' if cfg.per_host else ''}, "
            f"{cfg.users} sessions, medians of {cfg.reps} rep(s) × {cfg.duration:g}s"),
           (f"{'N':>3}{'sends/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'host':>7}{'hosts':>7}{'NATS':>7}{'PG':>7}"
            f"{'T(N)/N·T1':>11}{'thrtl':>7}{'idle':>6}{'loadgen':>8}{'behind':>8}  verdict"),
           f"{'':>28}{'CPU µs per send':^28}"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    for r in rows:
        out.append(f"{r['n']:>3}{fmt(r['sends_per_s'], '.0f'):>9}{fmt(r['p50_ms'], '.1f'):>8}"
                   f"{fmt(r['p99_ms'], '.1f'):>8}{fmt(r['host_us_per_send'], '.0f'):>7}"
                   f"{fmt(r['hosts_us_per_send'], '.0f'):>7}{fmt(r['nats_us_per_send'], '.0f'):>7}"
                   f"{fmt(r['pg_us_per_send'], '.0f'):>7}{fmt(r['scaling'], '.2f'):>11}"
                   f"{ {True: 'yes', False: 'NO'}.get(r['throttled_ok'], 'n/a'):>7}{fmt(r['idle_cores'], '.2f'):>6}"
                   f"{fmt(r['loadgen_cores'], '.2f'):>8}{fmt(r['replies_behind'], '.2f'):>8}  "
                   f"{'valid' if r['valid'] else 'INVALID: ' + '; '.join(r['why'])}")
    out.append("  host: a host's CPU / its share of the sends, mean over hosts; hosts: all hosts' CPU / all sends;"
               " thrtl: every host's nr_throttled rose; idle: idle cores of the machine; behind: growth of"
               " unfinished assistant replies per send")
    if any((r["replies_behind"] or 0) > 0.1 for r in rows if cfg.assistant):
        out.append("  replies fell behind the sends: sends/s is the send path's capacity, not a rate of answered turns")
    return "\n".join(out + [f"  N={r['n']} send errors: {r['errors']}" for r in rows if r["errors"]])


async def run_scale(cfg: ScaleConfig) -> dict[str, Any]:
    """One PostgreSQL and one 3-node cluster; for each rep, each N (order alternating): a measured run."""
    if cfg.cpu_share > 0 and (problem := cgroup_problem()):
        raise RuntimeError(f"cannot cap hosts: {problem}; --cpu-share 0 runs uncapped (no capacity figure)")
    root = Path(tempfile.mkdtemp(prefix="docchat-scale-"))
    password, callout = "bench-" + secrets.token_hex(8), "callout-" + secrets.token_hex(8)
    settings = Settings(service_password=password, callout_password=callout, data_dir=str(root),
                        model_provider="offline", log_level="warning")
    runs: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        pg = PgServer(fsync=cfg.pg_fsync)
        stack.callback(pg.stop)
        await asyncio.to_thread(pg.start)
        cluster = await stack.enter_async_context(NatsCluster(
            root / "nats", service_password=password, extra_env=server_env(CalloutKeys.create(), callout)))
        nc = await nats.connect(servers=cluster.servers, user="docchat", password=password, name="bench-scale",
                                pending_size=64 * 1024 * 1024)
        stack.push_async_callback(nc.close)
        log(f"PostgreSQL {pg.url()} fsync={'on' if cfg.pg_fsync else 'off'}; NATS cluster {cluster.url}")
        bench = Bench(cfg, root, settings, pg, cluster, nc)
        for rep in range(cfg.reps):
            for n in (cfg.hosts if rep % 2 == 0 else cfg.hosts[::-1]):
                runs.append(await bench.run(n, rep))
    rows = summarize(runs, cfg.hosts)
    print(format_table(rows, cfg), flush=True)
    return {"command": "bench-scale", "config": asdict(cfg), "rows": rows, "runs": runs}
