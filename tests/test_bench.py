"""The load generator runs against a real host and counts what it sent (no timing assertions)."""

from __future__ import annotations

from bench.echo import ECHO_PREFIX, EchoResponder
from bench.load import LoadConfig, run_load


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


async def test_echo_floor_answers_the_same_mix(nc):
    cfg = LoadConfig(users=2, sessions_per_user=2, concurrency=4, count=60, warmup=0,
                     mix={"send": 1, "messages": 1}, events=False, progress=False)
    async with EchoResponder(nc, sizes={"send": 300, "messages": 1000}):
        report = await run_load(nc, cfg, prefix=ECHO_PREFIX + ".u")

    assert report["errors"] == {}
    assert sum(e["count"] for e in report["endpoints"].values()) == 60
    assert report["endpoints"]["messages"]["mean_reply_bytes"] == 1000
