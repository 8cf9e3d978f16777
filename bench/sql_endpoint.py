"""Latency of the SQL endpoint while the pipelines run: `clickflow up --demo`, a 7-day
page-view history loaded through Kafka, then a 7-day rollup query (per day: views, average
duration, unique users, bounce rate, from the hourly rollup) asked N times through
clickhouse-connect's HTTP client while a second process sends ``--rate`` page views a second
(the pipelines insert throughout). Goal (issue 22): p99 under 100 ms.

Besides the wall time of each query it reports the engine's own time (``elapsed_ns`` of the
``X-ClickHouse-Summary`` header): the rest is HTTP, the server's threads and waiting for the
GIL of the process the pipelines run in."""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import clickhouse_connect
import httpx
import orjson
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from _common import load_average, machine, today  # noqa: E402

from tests.runtime.up_env import up_env  # noqa: E402

ROLLUP = """
SELECT toDate(window_start) AS day,
       sumMerge(view_count) AS views,
       if(views = 0, 0, sumMerge(total_duration) / views) AS avg_duration_ms,
       uniqExactMerge(unique_users) AS unique_users,
       if(views = 0, 0, sumMerge(bounce_count) / views) AS bounce_rate
FROM page_views_agg_hour
WHERE window_start >= now() - INTERVAL 7 DAY
GROUP BY day ORDER BY day
"""


def load_history(bootstrap: str, events: int) -> None:
    """``events`` page views spread over the last 7 days, 2,000 pages, 50,000 users."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(events):
        at = now - timedelta(seconds=rng.uniform(60, 7 * 86400 - 3600))
        event = {
            "page_id": f"/history/{rng.randrange(2000)}",
            "user_id": f"h{rng.randrange(50_000)}",
            "view_duration_ms": rng.randrange(100, 300_000),
            "timestamp": at.isoformat(),
            "is_bounce": rng.random() < 0.3,
            "region": "eu",
        }
        while True:
            try:
                producer.produce("page_views", orjson.dumps(event), key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def send_live(bootstrap: str, rate: int, stop: multiprocessing.synchronize.Event) -> None:
    """Page views of now at ``rate`` a second until ``stop`` is set (in its own process, so
    that the client's timings do not share a GIL with it)."""
    rng = random.Random(11)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            event = {
                "page_id": f"/live/{rng.randrange(2000)}",
                "user_id": f"l{rng.randrange(50_000)}",
                "view_duration_ms": rng.randrange(100, 300_000),
                "timestamp": datetime.now(UTC).isoformat(),
                "is_bounce": rng.random() < 0.3,
                "region": "eu",
            }
            try:
                producer.produce("page_views", orjson.dumps(event), key=str(sent).encode())
            except BufferError:
                producer.poll(0.05)
                continue
            sent += 1
        producer.poll(0.01)
    producer.flush(30)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(0, int(len(sorted_values) * q) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--history", type=int, default=100_000, help="page views over 7 days")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--rate", type=int, default=2000, help="live page views/s while querying")
    ap.add_argument(
        "--pause", type=float, default=0.0, help="seconds between queries (a dashboard: 10-30)"
    )
    args = ap.parse_args()
    # A SIGTERM (a time limit) still runs the clean-up below: `up` must not outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{Path(__file__).name}: terminated"))
    tmp = Path(tempfile.mkdtemp(prefix="clickflow-sql-"))
    env, ports = up_env(tmp)
    up = subprocess.Popen(
        [sys.executable, "-m", "clickflow", "up", "--demo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{ports['sql']}/ping", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or up.poll() is not None:
                raise SystemExit(f"the system did not come up: see {tmp}/data/logs")
            time.sleep(0.5)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=ports["sql"])
        load_history(f"127.0.0.1:{ports['kafka']}", args.history)
        deadline = time.monotonic() + 900
        count = "SELECT count() FROM page_views_raw WHERE page_id LIKE '/history/%'"
        while client.command(count) < args.history:
            if time.monotonic() > deadline:
                raise SystemExit("the history was not stored within 15 minutes")
            time.sleep(1)
        days = client.query(ROLLUP).result_rows
        stop = multiprocessing.get_context("spawn").Event()
        sender = multiprocessing.get_context("spawn").Process(
            target=send_live, args=(f"127.0.0.1:{ports['kafka']}", args.rate, stop)
        )
        if args.rate:
            sender.start()
            time.sleep(3)  # the pipelines are busy with the live events before the first query
        times, engine = [], []
        try:
            for _ in range(args.queries):
                started = time.perf_counter()
                result = client.query(ROLLUP)
                times.append(time.perf_counter() - started)
                engine.append(int(result.summary.get("elapsed_ns", 0)) / 1e9)
                time.sleep(args.pause)
            live = client.command(
                "SELECT count() FROM page_views_raw WHERE processed_time > now() - 10"
            )
        finally:
            stop.set()
            if args.rate:
                sender.join(60)
        times.sort()
        engine.sort()
        print(
            orjson.dumps(
                {
                    "machine": machine(),
                    "date": today(),
                    "load_average": load_average(),
                    "history_events": args.history,
                    "days": len(days),
                    "queries": args.queries,
                    "live_rate": args.rate,
                    "pause_s": args.pause,
                    "p50_ms": round(percentile(times, 0.5) * 1000, 1),
                    "p99_ms": round(percentile(times, 0.99) * 1000, 1),
                    "max_ms": round(times[-1] * 1000, 1),
                    "engine_p50_ms": round(percentile(engine, 0.5) * 1000, 1),
                    "engine_p99_ms": round(percentile(engine, 0.99) * 1000, 1),
                    "pipeline_rows_last_10s": live,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    main()
