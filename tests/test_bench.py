"""The load generator runs against a real host and counts what it sent (no timing assertions)."""

from __future__ import annotations

from bench.echo import ECHO_PREFIX, EchoResponder
from bench.load import LoadConfig, run_load
from bench.stats import format_report
from bench.tracker import Tracker, decode_event


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
