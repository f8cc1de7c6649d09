"""Command line of the bench: `load` (load generator + echo floor), `sessions` (100k idle sessions) and
`bench-scale` (1, 2, 4 CPU-capped hosts on a 3-node cluster with PostgreSQL).

    docchat load --spawn -c 16,128 --mix send=1 --duration 10 --floor --json out.json
    docchat load --nats-url nats://127.0.0.1:4222 --rate 2000 --duration 30 --mix send=0.8,messages=0.2
    docchat load --spawn --sustained --mix send=1 --duration 10     # event delivery at half the sustained rate
    docchat bench-sessions --spawn --sessions 100000 --idle-seconds 10
    docchat bench-scale --hosts 1,2,4 --reps 3 --duration 10 --cpu-share 0.2 --json scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, TypeVar

import nats
from nats.errors import Error as NatsError

from actors.localcluster import stop_child
from contracts.errors import DocchatError

from .echo import ECHO_PREFIX, set_sizes, spawn_echo
from .load import Load, LoadConfig, log, parse_mix
from .scale import ScaleConfig, run_scale
from .sessions import SessionsConfig, format_sessions, run_sessions
from .spawn import CpuMeter, Endpoint, spawned, wait_cpu_idle
from .stats import compare, format_compare, format_report
from .sustained import Search, keeps_up

T = TypeVar("T")


def numbers(text: str) -> list[float]:
    """`16,128` → [16.0, 128.0]."""
    return [float(x) for x in text.split(",") if x]


def common(p: argparse.ArgumentParser) -> None:
    """Options both commands share: where the service is, or --spawn."""
    p.add_argument("--spawn", action="store_true",
                   help="start a fresh nats-server and `docchat serve` (offline model, temp data dir)")
    p.add_argument("--nats-url", default=os.environ.get("DOCCHAT_NATS_URL") or "nats://127.0.0.1:4222")
    p.add_argument("--user", default="docchat", help="service user (trusted, no callout)")
    p.add_argument("--password", default=os.environ.get("DOCCHAT_SERVICE_PASSWORD", "docchat-dev"))
    p.add_argument("--service-pid", type=int, help="pid of docchat serve, to read its RSS")
    p.add_argument("--keep", action="store_true", help="with --spawn: keep the temp data dir and docchat.log")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds")


def parser() -> argparse.ArgumentParser:
    """The `load`, `sessions` (alias `bench-sessions`) and `bench-scale` subcommands."""
    p = argparse.ArgumentParser(prog="docchat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("load", help="drive docchat with a send/messages mix and report latency and req/s")
    common(lp)
    lp.add_argument("--users", type=int, default=32)
    lp.add_argument("--sessions-per-user", type=int, default=4)
    lp.add_argument("-c", "--concurrency", default="16", help="closed-loop workers; a list runs each: 16,128")
    lp.add_argument("--rate", default="", help="open-loop target req/s instead (a list runs each: 1000,2000)")
    lp.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    lp.add_argument("--count", type=int, default=0, help="requests per run instead of a duration")
    lp.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    lp.add_argument("--mix", default="send=1", help="endpoint weights, e.g. send=0.8,messages=0.2")
    lp.add_argument("--content-chars", type=int, default=200)
    lp.add_argument("--document-bytes", type=int, default=2048)
    lp.add_argument("--page", type=int, default=100, help="messages limit per request")
    lp.add_argument("--prefill", type=int, default=-1,
                    help="sends per session before measuring (default: --page when the mix reads messages)")
    lp.add_argument("--no-events", action="store_true", help="do not subscribe to sessions' events")
    lp.add_argument("--floor", action="store_true",
                    help="after each run, the same run against a nats.micro echo responder; print ratios")
    lp.add_argument("--settle-max", type=float, default=120.0,
                    help="after each run, wait up to this long for the service's reply backlog to finish")
    lp.add_argument("--offline-delay", type=float, default=0.0, help="with --spawn: pause per offline-model chunk")
    lp.add_argument("--no-assistant", action="store_true", help="with --spawn: DOCCHAT_RUN_ASSISTANT=false")
    lp.add_argument("--sustained", action="store_true",
                    help="find the highest open-loop rate kept up with (short probes), then run at half of it")
    lp.add_argument("--sustained-from", type=float, default=200.0, help="first probe rate (req/s)")
    lp.add_argument("--probe-seconds", type=float, default=5.0, help="seconds per probe run")
    lp.add_argument("--max-probes", type=int, default=16, help="probe runs at most, second tries included")
    sp = sub.add_parser("sessions", aliases=["bench-sessions"], help="100k idle sessions: RSS and wake-up latency")
    common(sp)
    sp.add_argument("--sessions", type=int, default=100_000)
    sp.add_argument("--per-user", type=int, default=10, help="sessions (documents) per user")
    sp.add_argument("-c", "--concurrency", type=int, default=128)
    sp.add_argument("--idle-seconds", type=float, default=10.0, help="with --spawn: DOCCHAT_IDLE_SECONDS")
    sp.add_argument("--idle-wait", type=float, default=0.0,
                    help="seconds to wait for passivation (default: idle seconds + 10)")
    sp.add_argument("--sample", type=int, default=1000, help="sessions woken one at a time")
    sc = sub.add_parser("bench-scale", help="1, 2, 4 CPU-capped hosts on a 3-node NATS cluster and PostgreSQL")
    sc.add_argument("--hosts", default="1,2,4", help="host counts N to run, e.g. 1,2,4")
    sc.add_argument("--reps", type=int, default=3, help="repetitions of every N (order alternates); medians")
    sc.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    sc.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run, after the cap is on")
    sc.add_argument("-c", "--concurrency", type=int, default=64, help="closed-loop send workers")
    sc.add_argument("--per-host", action="store_true",
                    help="-c is per host: N hosts get N×C workers (the same queue depth, so batching, per host)")
    sc.add_argument("--users", type=int, default=1024, help="users, one session each (spread over 64 partitions)")
    sc.add_argument("--cpu-share", type=float, default=0.2,
                    help="cgroup cap per host in cores (0: uncapped, no capacity figure)")
    sc.add_argument("--assistant", action=argparse.BooleanOptionalAction, default=True,
                    help="each host runs its assistant (offline model)")
    sc.add_argument("--pg-fsync", action=argparse.BooleanOptionalAction, default=True,
                    help="PostgreSQL with fsync on (honest) or off (as the tests run it)")
    sc.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds")
    sc.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    sc.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    return p


@asynccontextmanager
async def target(args: argparse.Namespace, extra_env: dict[str, str]) -> AsyncIterator[Endpoint]:
    """The service to measure: spawned, or the one at --nats-url."""
    if args.spawn:
        async with spawned(extra_env, keep=args.keep) as ep:
            yield ep
    else:
        yield Endpoint(args.nats_url, args.user, args.password, args.service_pid)


def write_json(path: str | None, data: Any) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        log(f"wrote {path}")


def load_config(args: argparse.Namespace) -> LoadConfig:
    """LoadConfig from the `load` options (concurrency and rate are set per run)."""
    mix = parse_mix(args.mix)
    prefill = args.prefill if args.prefill >= 0 else (args.page if "messages" in mix else 0)
    return LoadConfig(users=args.users, sessions_per_user=args.sessions_per_user, duration=args.duration,
                      count=args.count, warmup=args.warmup, mix=mix, content_chars=args.content_chars,
                      document_bytes=args.document_bytes, page=args.page, prefill=prefill,
                      timeout=args.timeout, events=not args.no_events, progress=not args.quiet)


async def load_command(args: argparse.Namespace) -> dict[str, Any]:
    """Setup once, then for each C (or rate): the docchat run and, with --floor, the echo run. With
    --sustained, short probe runs find the highest send rate kept up with first; one run at half of it follows."""
    cfg = load_config(args)
    env = {"DOCCHAT_OFFLINE_DELAY_SECONDS": str(args.offline_delay)}
    if args.no_assistant:
        env["DOCCHAT_RUN_ASSISTANT"] = "false"
    if args.sustained and "send" not in cfg.mix:
        raise ValueError("--sustained needs send in the --mix")
    plan = [("rate", r) for r in numbers(args.rate)] or [("concurrency", c) for c in numbers(args.concurrency)]
    result: dict[str, Any] = {"command": "load", "config": dataclasses.asdict(cfg), "runs": []}
    async with target(args, env) as ep:
        nc = await nats.connect(ep.url, user=ep.user, password=ep.password, name="bench-load",
                                pending_size=64 * 1024 * 1024)
        echo_proc = await spawn_echo(ep.url, ep.user, ep.password) if args.floor else None
        load = Load(nc, cfg)

        async def settle() -> float:
            return await load.quiesce(args.settle_max) + await wait_cpu_idle(ep.service_pid, args.settle_max)

        async def measure(kind: str, value: float, label: str, run_cfg: LoadConfig) -> dict[str, Any]:
            """One docchat run, then the service left to finish its backlog."""
            load.cfg = run_cfg
            log(f"docchat {label}, mix {cfg.mix}, {run_cfg.count or run_cfg.duration} {'requests' if run_cfg.count else 's'}")
            meter = CpuMeter({"bench": os.getpid(), "docchat": ep.service_pid, "nats-server": ep.server_pid})
            meter.start()
            rep = await load.run()
            rep["cpu_cores"] = meter.stop()
            log(f"service quiet after {await settle():.1f}s")
            return {kind: value, "docchat": rep}

        try:
            log(f"setup: {cfg.users} users × {cfg.sessions_per_user} sessions")
            result["setup"] = await load.setup()
            if cfg.prefill:
                log(f"prefill done; service quiet after {await settle():.1f}s")
            if args.sustained:
                search = Search(start=args.sustained_from, max_probes=args.max_probes)

                async def probe(rate: float) -> tuple[bool, str]:
                    probe_cfg = dataclasses.replace(cfg, rate=rate, duration=args.probe_seconds, progress=False)
                    run = await measure("rate", rate, f"probe rate={rate:g}/s", probe_cfg)
                    ok, why = keeps_up(run["docchat"], rate, replies=not args.no_assistant)
                    print(f"probe {rate:g}/s for {args.probe_seconds:g} s: {'kept up' if ok else 'behind'} ({why})",
                          flush=True)
                    return ok, why

                best = await search.run(probe)
                result["sustained"] = {"probes": search.probes, "max_rate": best, "measured_at": best / 2}
                if not best:
                    raise RuntimeError(f"no probed rate was kept up with: {search.probes}")
                print(f"== highest rate kept up with: {best:g}/s; measuring at half of it, {best / 2:g}/s", flush=True)
                plan = [("rate", best / 2)]
            for kind, value in plan:
                run_cfg = dataclasses.replace(cfg, rate=value if kind == "rate" else 0.0,
                                              concurrency=int(value) if kind == "concurrency" else cfg.concurrency)
                label = f"C={run_cfg.concurrency}" if kind == "concurrency" else f"rate={value:g}/s"
                run = await measure(kind, value, label, run_cfg)
                rep = run["docchat"]
                print(format_report(f"docchat {label}", rep), flush=True)
                if echo_proc is not None:
                    sizes = {k: e["mean_reply_bytes"] for k, e in rep["endpoints"].items() if "mean_reply_bytes" in e}
                    await set_sizes(nc, sizes)
                    echo = Load(nc, dataclasses.replace(run_cfg, events=False), prefix=ECHO_PREFIX + ".u")
                    await echo.setup()
                    log(f"echo floor {label}, reply bytes {sizes}")
                    meter = CpuMeter({"bench": os.getpid(), "echo": echo_proc.pid, "docchat": ep.service_pid,
                                      "nats-server": ep.server_pid})
                    meter.start()
                    run["echo"] = await echo.run()
                    run["echo"]["cpu_cores"] = meter.stop()
                    run["ratio"] = compare(rep, run["echo"])
                    print(format_report(f"echo floor {label}", run["echo"]), flush=True)
                    print(f"== docchat / echo floor, {label}\n{format_compare(run['ratio'])}", flush=True)
                    await settle()
                result["runs"].append(run)
        finally:
            await load.close()
            if echo_proc is not None:
                await stop_child(echo_proc, timeout=10)
            await nc.close()
    return result


def scale_config(args: argparse.Namespace) -> ScaleConfig:
    """ScaleConfig from the `bench-scale` options."""
    return ScaleConfig(hosts=[int(n) for n in numbers(args.hosts)], reps=args.reps, duration=args.duration,
                       warmup=args.warmup, concurrency=args.concurrency, per_host=args.per_host, users=args.users,
                       cpu_share=args.cpu_share, assistant=args.assistant, pg_fsync=args.pg_fsync, timeout=args.timeout,
                       progress=not args.quiet)


async def sessions_command(args: argparse.Namespace) -> dict[str, Any]:
    """The idle-sessions scenario against the target."""
    idle_wait = args.idle_wait or (args.idle_seconds + 10 if args.spawn else 70.0)
    cfg = SessionsConfig(sessions=args.sessions, per_user=args.per_user, concurrency=args.concurrency,
                         idle_wait=idle_wait, sample=args.sample, timeout=args.timeout, progress=not args.quiet)
    env = {"DOCCHAT_IDLE_SECONDS": str(args.idle_seconds), "DOCCHAT_RUN_ASSISTANT": "false"}
    async with target(args, env) as ep:
        nc = await nats.connect(ep.url, user=ep.user, password=ep.password, name="bench-sessions")
        try:
            rep = await run_sessions(nc, cfg, ep.service_pid)
        finally:
            await nc.close()
    print(format_sessions(rep), flush=True)
    return rep


async def stopped_by_sigterm(work: Awaitable[T]) -> T:
    """Run work; SIGTERM (`timeout`, kill) cancels it, so the processes it spawned are stopped too."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work


def main(argv: list[str] | None = None) -> int:
    """Entry point: argv starts with the subcommand (`load`, `sessions`, `bench-sessions` or `bench-scale`)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from actors.logs import configure

    configure("warning")  # the spawned nats-server's info lines would mix with the report on stdout
    try:
        if args.command == "load":
            result = asyncio.run(stopped_by_sigterm(load_command(args)))
        elif args.command == "bench-scale":
            result = asyncio.run(stopped_by_sigterm(run_scale(scale_config(args))))
        else:
            result = asyncio.run(stopped_by_sigterm(sessions_command(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):  # SIGTERM is turned into a cancel
        return 130
    except (ValueError, RuntimeError, OSError, DocchatError, NatsError) as exc:
        print(f"docchat {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    write_json(args.json, result)
    return 0
