"""The load generator runs against a real host and counts what it sent (no timing assertions)."""

from __future__ import annotations

from bench.cli import load_command, parser
from bench.echo import ECHO_PREFIX, EchoResponder
from bench.load import LoadConfig, run_load
from bench.stats import format_report
from bench.sustained import Search, keeps_up
from bench.tracker import Tracker, decode_event
from tests.conftest import SERVICE_PASSWORD


async def test_load_report_counts_every_request_per_endpoint_with_no_errors(host, nc):
    cfg = LoadConfig(users=2, sessions_per_user=2, concurrency=4, count=120, warmup=0,
                     mix={"send": 1, "messages": 1}, document_bytes=256, page=20, progress=False)
    report = await run_load(nc, cfg)

    assert report["errors"] == {}
    assert report["setup"]["getOrCreate"]["count"] == 4
    counts = {name: e["count"] for name, e in report["endpoints"].items()}
    assert set(counts) <= {"send", "messages"} and sum(counts.values()) == 120
    assert report["event_delivery"]["count"] == counts["send"]
    assert report["events_missing"] == 0


async def test_load_report_says_how_many_replies_were_left_unfinished(host, nc):
    cfg = LoadConfig(users=1, sessions_per_user=2, concurrency=2, count=10, warmup=0, mix={"send": 1},
                     document_bytes=64, progress=False)
    report = await run_load(nc, cfg)  # this host runs no assistant: no reply ever ends

    assert report["replies_unfinished"] == report["endpoints"]["send"]["count"] == 10
    assert "replies not ended when the run ended: 10 of 10 sends (the assistant is behind" in format_report("r", report)


def test_a_reply_that_ended_no_longer_counts_as_unfinished():
    tracker = Tracker()
    stats = tracker.reset()
    tracker.on_send(0.0, "u1", "r1")
    tracker.on_send(0.0, "u2", "r2")
    tracker.on_event(decode_event(b'{"type":"message","message":{"id":"r1","sessionId":"s","seq":2,"role":"assistant",'
                                  b'"content":"hi","status":"complete","createdAt":1,"updatedAt":2}}'), 0.02)
    later = tracker.reset()  # the next phase's sends are not this one's backlog
    tracker.on_send(0.0, "u3", "r3")

    assert tracker.unfinished(stats) == 1
    assert tracker.unfinished(later) == 1
    assert len(stats.complete) == 1


async def test_echo_floor_answers_the_same_mix(nc):
    cfg = LoadConfig(users=2, sessions_per_user=2, concurrency=4, count=60, warmup=0,
                     mix={"send": 1, "messages": 1}, events=False, progress=False)
    async with EchoResponder(nc, sizes={"send": 300, "messages": 1000}):
        report = await run_load(nc, cfg, prefix=ECHO_PREFIX + ".u")

    assert report["errors"] == {}
    assert sum(e["count"] for e in report["endpoints"].values()) == 60
    assert report["endpoints"]["messages"]["mean_reply_bytes"] == 1000


def scale_run(tag, hosts: dict[str, int], sends_per_s: float, idle_cores: float = 1.0):
    """bench.scale.measure over a synthetic 10 s window: each host 0.2 core, `hosts` maps host → nr_throttled."""
    from collections import Counter

    from bench.scale import measure

    def sample(t: float, throttled: dict[str, int]) -> dict:
        return {"hosts": {h: 0.2 * t for h in hosts}, "nats": {"docchat-1": 0.05 * t}, "pg": 0.1 * t,
                "loadgen": 0.0, "machine": (int(idle_cores * t * 100), int(2 * t * 100), 2), "t": t,
                "throttled": throttled}

    sends = int(sends_per_s * 10)
    report = {"endpoints": {"send": {"count": sends, "rps": sends_per_s, "p50_ms": 5.0, "p99_ms": 9.0}}, "errors": {}}
    return measure(tag, len(hosts), 64, report, sample(0.0, dict.fromkeys(hosts, 0)), sample(10.0, hosts),
                   Counter(dict.fromkeys(hosts, 8)), 0, {})


def test_bench_scale_rows_give_t_n_over_n_t1_and_refuse_a_host_that_was_not_throttled():
    from bench.scale import ScaleConfig, format_table, summarize

    runs = [scale_run("r1n1", {"h1": 40}, 100.0), scale_run("r1n2", {"h1": 40, "h2": 0}, 180.0),
            scale_run("r1n4", {"a": 9, "b": 9, "c": 9, "d": 9}, 320.0, idle_cores=0.1)]
    rows = summarize(runs, [1, 2, 4])

    assert [r["scaling"] for r in rows] == [1.0, 0.9, 0.8]
    assert rows[0]["valid"] and rows[0]["host_us_per_send"] == 2000.0 and rows[0]["idle_cores"] == 1.0
    assert not rows[1]["valid"] and rows[1]["why"] == ["a host was not throttled"]
    assert not rows[2]["valid"] and rows[2]["why"] == ["idle < 0.3 core"]
    table = format_table(rows, ScaleConfig(reps=1))
    assert "INVALID: a host was not throttled" in table and "INVALID: idle < 0.3 core" in table


def probe_report(rate: float, sends: int, p99_ms: float, unended: int | None, errors=None) -> dict:
    """The parts of a load report keeps_up reads, for a 5 s open-loop run."""
    rep = {"endpoints": {"send": {"count": sends, "rps": sends / 5, "p99_ms": p99_ms}}, "errors": errors or {}}
    if unended is not None:
        rep["replies_unfinished"] = unended
    return rep


def test_a_probe_keeps_up_only_with_no_errors_its_rate_reached_a_bounded_p99_and_replies_ending():
    assert keeps_up(probe_report(400, 2000, 6.0, 20), 400, replies=True)[0]
    assert keeps_up(probe_report(400, 2000, 6.0, None), 400, replies=True)[0]
    assert not keeps_up(probe_report(400, 2000, 6.0, 20, errors={"send": {"timeout": 1}}), 400, replies=True)[0]
    assert not keeps_up(probe_report(400, 1500, 6.0, 20), 400, replies=True)[0]  # reached 300/s
    assert not keeps_up(probe_report(400, 2000, 250.0, 20), 400, replies=True)[0]  # queueing up
    behind = keeps_up(probe_report(400, 2000, 6.0, 900), 400, replies=True)
    assert not behind[0] and "900 of 2000 replies not ended" in behind[1]
    # Without an assistant every reply stays pending, and that says nothing about the send rate.
    assert keeps_up(probe_report(400, 2000, 6.0, 2000), 400, replies=False)[0]


async def test_the_sustained_search_closes_in_on_the_highest_rate_kept_up_with():
    capacity = 730.0
    tried = []

    async def probe(rate: float):
        tried.append(rate)
        return rate <= capacity, "synthetic service"

    search = Search(start=200)
    best = await search.run(probe)
    assert tried[:4] == [200, 300, 450, 675] and tried[4] > capacity  # up by half each time, past the limit
    assert 0.9 * capacity <= best <= capacity and best == search.best
    assert search.worst - best <= 0.1 * search.worst  # stopped once the gap was under a tenth
    assert len(tried) <= search.max_probes


async def test_one_stalled_probe_does_not_lower_the_sustained_rate_but_a_rate_behind_twice_does():
    capacity = 730.0
    tried = []

    async def probe(rate: float):
        tried.append(rate)
        if rate == 450 and tried.count(450) == 1:
            return False, "the machine stalled"  # below capacity: a second try keeps up
        return rate <= capacity, "synthetic service"

    search = Search(start=200)
    best = await search.run(probe)
    assert tried[:5] == [200, 300, 450, 450, 675]
    assert 0.9 * capacity <= best <= capacity
    over = [rate for rate in tried if rate > capacity]
    assert over and all(tried.count(rate) == 2 for rate in over)  # behind twice before it counts
    assert search.worst == min(over) and len(tried) <= search.max_probes


async def test_the_sustained_search_goes_below_its_start_when_even_that_is_too_fast():
    async def probe(rate: float):
        return rate <= 60, "synthetic service"

    search = Search(start=200)
    best = await search.run(probe)
    assert 54 <= best <= 60


async def test_load_sustained_probes_rates_then_measures_at_half_the_highest_kept_up_with(host, nats_server, capsys):
    args = parser().parse_args([
        "load", "--nats-url", nats_server.url, "--password", SERVICE_PASSWORD, "--users", "2",
        "--sessions-per-user", "2", "--document-bytes", "64", "--warmup", "0", "--duration", "1", "--quiet",
        "--no-assistant", "--sustained", "--sustained-from", "40", "--probe-seconds", "1", "--max-probes", "3"])
    result = await load_command(args)

    probes = result["sustained"]["probes"]
    assert [p["rate"] for p in probes] == [40, 60, 90] and all(p["ok"] for p in probes)
    assert result["sustained"]["max_rate"] == 90
    (run,) = result["runs"]
    assert run["rate"] == 45 and run["docchat"]["errors"] == {}
    assert 35 <= run["docchat"]["endpoints"]["send"]["count"] <= 46  # about 45 sends in the measured second
    out = capsys.readouterr().out
    assert "probe 40/s for 1 s: kept up" in out and "highest rate kept up with: 90/s; measuring at half" in out
