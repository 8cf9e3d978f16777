"""Latency of the SQL endpoint while the pipelines run: `clickflow up --demo`, a 7-day
page-view history loaded through Kafka, then a 7-day rollup query (per day: views, average
duration, unique users, bounce rate, from the hourly rollup) asked N times through
clickhouse-connect's HTTP client. Goal (issue 22): p99 under 100 ms."""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--history", type=int, default=100_000, help="page views over 7 days")
    ap.add_argument("--queries", type=int, default=500)
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
        times = []
        for _ in range(args.queries):
            started = time.perf_counter()
            client.query(ROLLUP)
            times.append(time.perf_counter() - started)
        times.sort()
        live = client.command(
            "SELECT count() FROM page_views_raw WHERE processed_time > now() - 10"
        )
        print(
            orjson.dumps(
                {
                    "machine": machine(),
                    "date": today(),
                    "load_average": load_average(),
                    "history_events": args.history,
                    "days": len(days),
                    "queries": args.queries,
                    "p50_ms": round(times[len(times) // 2] * 1000, 1),
                    "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 1),
                    "max_ms": round(times[-1] * 1000, 1),
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
