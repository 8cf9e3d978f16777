"""adclicks bench: sustained clicks/s end to end, and query latency on 7 days of aggregates.

1. Throughput: N generated clicks (Zipf ads, 5% late, 1% copies, 1% broken) are produced
   to a private tansu broker, then the real pipeline (BatchConsumer + AdClicksHandler,
   exactly-once, chDB in this process) drains them: decode, validate, dedup, watermark,
   insert raw + minute view. Clicks/s = records / (last commit - partitions assigned).
   The producer rate is reported separately (it runs before, not during, the drain).
2. Latency: 7 days x 1440 minutes of minute aggregates for 10,000 ads (Zipf-like, with
   country/device/os) are loaded into ad_clicks_minute; then aggregated_count and
   popular_ads (top 100; M = 1 and 60) are called through the FastAPI router in-process
   (routing, validation, SQL, finality lookup), popular_ads cache off unless said so.
   user_id filters are answered from the raw store (the N clicks of part 1).

    .venv/bin/python bench/adclicks.py [--clicks 1000000] [--per-minute 2000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import embedded_broker, load_average, machine, today  # noqa: E402

from clickflow.config import Settings  # noqa: E402
from clickflow.domains.adclicks import api  # noqa: E402
from clickflow.domains.adclicks.config import AdClicksConfig  # noqa: E402
from clickflow.domains.adclicks.pipeline import pipeline_spec  # noqa: E402
from clickflow.domains.adclicks.traffic import AdClickFactory  # noqa: E402
from clickflow.kafka.config import producer_config  # noqa: E402
from clickflow.kafka.producer import EventProducer  # noqa: E402
from clickflow.migrations import migrate_clickhouse  # noqa: E402
from clickflow.pipelines import build_consumer  # noqa: E402
from clickflow.stores.clickhouse import clickhouse_client  # noqa: E402

LOAD_SQL = """
INSERT INTO ad_clicks_minute (minute, ad_id, country, device, os, clicks)
SELECT
    toDateTime({end:UInt32} - 60 * (1 + intDiv(number, {per_minute:UInt32})), 'UTC'),
    concat('ad-', leftPad(toString(toUInt32(10000 * pow(randCanonical(), 3))), 6, '0')),
    ['US', 'IN', 'BR', 'DE', 'GB', 'FR', 'JP', 'CA', 'MX', 'ID'][1 + rand(1) % 10],
    ['mobile', 'mobile', 'desktop', 'tablet'][1 + rand(2) % 4],
    ['android', 'ios', 'windows', 'macos', 'linux'][1 + rand(3) % 5],
    1 + rand(4) % 20
FROM numbers({rows:UInt64})
"""


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process (the pipeline, chDB's threads; the generator and
    producer are idle while the pipeline drains) and of its servers (broker, Redis)."""
    me = psutil.Process()
    servers = 0.0
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        servers += t.user + t.system
    t = me.cpu_times()
    return {"pipeline": t.user + t.system, "servers": servers}


def throughput(settings: Settings, cfg: AdClicksConfig, clicks: int) -> dict:
    factory = AdClickFactory(ads=10_000, topic=cfg.topic, late_share=0.05, seed=5)
    rng = random.Random(5)
    t0 = time.time() - 120
    values: list[tuple[bytes, bytes]] = []
    recent: list[tuple[bytes, bytes]] = []
    valid = 0
    started = time.perf_counter()
    for i in range(clicks):
        now = t0 + 120 * i / clicks
        r = rng.random()
        if r < 0.01 and recent:
            values.append(rng.choice(recent))
        elif r < 0.02:
            ev = factory.broken(rng, now, rng.choice(factory.breakages))
            values.append((ev.key, ev.value))
        else:
            ev = factory.valid(rng, now)
            values.append((ev.key, ev.value))
            valid += 1
            if len(recent) < 1000:
                recent.append(values[-1])
            else:
                recent[rng.randrange(1000)] = values[-1]
    gen_s = time.perf_counter() - started

    spec = pipeline_spec(cfg)
    consumer = build_consumer(settings, spec)  # its default options; creates the topics
    producer = EventProducer(producer_config(settings, **{"linger.ms": 20}))
    started = time.perf_counter()
    for key, value in values:
        producer.send(cfg.topic, value, key=key)
    assert producer.flush(120) == 0
    produce_s = time.perf_counter() - started
    del values, recent

    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    consumer.ready.wait(60)
    t_ready = time.perf_counter()
    cpu_ready = cpu_seconds()
    while consumer.stats.records < clicks:
        time.sleep(0.01)
    # The last batch is handed over by the time trigger; wait for its commit.
    batches = consumer.stats.batches
    while consumer.stats.commits < batches + 1 and consumer.stats.records == clicks:
        time.sleep(0.005)
        if time.perf_counter() - t_ready > 600:
            break
    drain_s = time.perf_counter() - t_ready
    cpu = {k: v - cpu_ready[k] for k, v in cpu_seconds().items()}
    consumer.stop()
    thread.join(60)
    ch = clickhouse_client(settings)
    counted = ch.query("SELECT sum(clicks) FROM ad_clicks_minute").result_rows[0][0]
    raw_rows, raw_distinct = ch.query(
        "SELECT count(), uniqExact(click_id) FROM ad_clicks_raw"
    ).result_rows[0]
    return {
        "clicks": clicks,
        "valid_distinct": valid,
        "counted": int(counted),
        "raw_rows": int(raw_rows),
        "raw_distinct": int(raw_distinct),
        "generate_per_s": clicks / gen_s,
        "produce_per_s": clicks / produce_s,
        "drain_s": drain_s,
        "pipeline_per_s": clicks / drain_s,
        "cpu_us_per_click": {k: 1e6 * v / clicks for k, v in cpu.items()},
        "batches": consumer.stats.batches,
        "trigger": spec.default_options.trigger,
    }


def load_week(settings: Settings, per_minute: int, end: datetime) -> dict:
    ch = clickhouse_client(settings)
    rows = 7 * 1440 * per_minute
    started = time.perf_counter()
    ch.command(
        LOAD_SQL,
        parameters={"end": int(end.timestamp()), "per_minute": per_minute, "rows": rows},
    )
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    ch.command("OPTIMIZE TABLE ad_clicks_minute FINAL")
    optimize_s = time.perf_counter() - started
    stored = ch.query("SELECT count(), uniqExact(ad_id) FROM ad_clicks_minute").result_rows[0]
    return {
        "rows_inserted": rows,
        "rows_stored": int(stored[0]),
        "ads": int(stored[1]),
        "load_s": load_s,
        "optimize_s": optimize_s,
    }


def latency(client, n: int, make_request) -> dict:
    for _ in range(10):
        make_request()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = make_request()
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    times.sort()
    return {
        "p50": statistics.median(times),
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "max": times[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=1_000_000)
    ap.add_argument("--per-minute", type=int, default=2000, help="aggregate rows per minute")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary chDB directory")
    ap.add_argument("--json", type=Path, help="write the throughput figures to this file")
    ap.add_argument(
        "--ab",
        nargs="+",
        metavar="REV",
        help="A/B of the throughput: each git revision ('.' = this working tree) in its own "
        "process with this script, alternating, --trials times each; prints the medians",
    )
    ap.add_argument("--trials", type=int, default=3, help="trials per revision with --ab")
    args = ap.parse_args()
    if args.ab:
        ab(args.ab, args.trials, args.clicks)
        return
    tmp = Path(tempfile.mkdtemp(prefix="clickflow-bench-adclicks-"))
    try:
        run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    from clickflow.runtime.redis_server import start_redis

    redis_proc, redis_url = start_redis(tmp / "redis")  # click_id claims
    try:
        with embedded_broker() as bootstrap:
            settings = Settings(
                data_dir=tmp,
                kafka_bootstrap=bootstrap,
                clickhouse_dsn=f"chdb:///{tmp / 'clickhouse'}",
                clickhouse_database="bench",
                redis_url=redis_url,
            )
            _run(args, settings)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    cfg = AdClicksConfig(topic="adclicks-bench", popular_cache_s=0)
    migrate_clickhouse(settings, ["adclicks"])
    print(f"machine: {machine()}; {load_average()}")
    tp = throughput(settings, cfg, args.clicks)
    print(
        f"throughput: {tp['pipeline_per_s']:,.0f} clicks/s end to end through the pipeline "
        f"({tp['clicks']:,} records in {tp['drain_s']:.1f} s, {tp['batches']} batches of <= "
        f"{tp['trigger'].max_records:,}; "
        f"counted {tp['counted']:,} of {tp['valid_distinct']:,} distinct valid clicks, "
        f"raw store {tp['raw_rows']:,} rows / {tp['raw_distinct']:,} click_ids); "
        f"producer {tp['produce_per_s']:,.0f}/s, generator {tp['generate_per_s']:,.0f}/s"
    )
    cpu = tp["cpu_us_per_click"]
    print(
        f"CPU per click while draining: {cpu['pipeline']:.1f} us in the pipeline's process "
        f"(handler, consumer, chDB), {cpu['servers']:.1f} us in the broker and Redis"
    )
    if args.json:
        args.json.write_text(json.dumps({**tp, "trigger": None, "load": os.getloadavg()}))
    assert tp["counted"] == tp["valid_distinct"], "the pipeline miscounted"
    if args.throughput_only:
        return

    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    wk = load_week(settings, args.per_minute, end)
    print(
        f"loaded 7 days of minute aggregates: {wk['rows_inserted']:,} rows for "
        f"{wk['ads']:,} ads in {wk['load_s']:.1f} s (+ OPTIMIZE FINAL {wk['optimize_s']:.1f} s"
        f" -> {wk['rows_stored']:,} rows)"
    )
    print(f"{load_average()}")

    app = FastAPI()
    app.state.settings = settings
    app.include_router(api.router)
    app.dependency_overrides[api.adclicks_config] = lambda: cfg
    client = TestClient(app)
    rng = random.Random(1)

    def some_ad() -> str:
        return f"ad-{int(10000 * rng.random() ** 3):06d}"

    def some_end() -> str:
        return (end - timedelta(minutes=rng.randrange(0, 7 * 1440 - 60))).isoformat()

    def count(minutes: int):
        def req():
            to = end - timedelta(minutes=rng.randrange(0, 7 * 1440 - minutes + 1))
            frm = to - timedelta(minutes=minutes)
            return client.get(
                f"/v1/ads/{some_ad()}/aggregated_count",
                params={"from": frm.isoformat(), "to": to.isoformat()},
            )

        return req

    def popular(window: int, filt: str | None = None):
        def req():
            params = {"topN": 100, "window": window, "to": some_end()}
            if filt:
                params["filter"] = filt
            return client.get("/v1/ads/popular_ads", params=params)

        return req

    raw_users = [
        r[0]
        for r in clickhouse_client(settings)
        .query("SELECT user_id FROM ad_clicks_raw LIMIT 1000")
        .result_rows
    ]
    raw_end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)

    def count_user():
        return client.get(
            f"/v1/ads/{some_ad()}/aggregated_count",
            params={
                "from": (raw_end - timedelta(minutes=60)).isoformat(),
                "to": raw_end.isoformat(),
                "filter": f"user_id={rng.choice(raw_users)}",
            },
        )

    def popular_user():
        return client.get(
            "/v1/ads/popular_ads",
            params={
                "topN": 100,
                "window": 60,
                "to": raw_end.isoformat(),
                "filter": f"user_id={rng.choice(raw_users)}",
            },
        )

    cases = [
        ("aggregated_count, M = 1", count(1)),
        ("aggregated_count, M = 60", count(60)),
        ("aggregated_count, 7 days", count(7 * 1440)),
        ("aggregated_count, M = 60, filter country=US,device=mobile", None),
        ("popular_ads top 100, M = 1", popular(1)),
        ("popular_ads top 100, M = 60", popular(60)),
        ("popular_ads top 100, M = 60, filter country=US", popular(60, "country=US")),
        ("aggregated_count, M = 60, filter user_id (raw store)", count_user),
        ("popular_ads top 100, M = 60, filter user_id (raw store)", popular_user),
    ]

    def count_filtered():
        to = end - timedelta(minutes=rng.randrange(0, 7 * 1440 - 60))
        return client.get(
            f"/v1/ads/{some_ad()}/aggregated_count",
            params={
                "from": (to - timedelta(minutes=60)).isoformat(),
                "to": to.isoformat(),
                "filter": "country=US,device=mobile",
            },
        )

    cases[3] = (cases[3][0], count_filtered)
    for name, req in cases:
        lat = latency(client, args.requests, req)
        print(
            f"{name}: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['max']:.1f} ms ({args.requests} requests)"
        )
    # The same queries without HTTP/FastAPI: how much of the latency is the store's.
    ch = clickhouse_client(settings)

    class _Ok:
        status_code = 200

    def sql_popular():
        to = end - timedelta(minutes=rng.randrange(0, 7 * 1440 - 60))
        ch.query(
            api.POPULAR_AGGREGATE_SQL.replace("/*filters*/", ""),
            parameters={"start": to - timedelta(minutes=60), "end": to, "n": 100},
        )
        return _Ok

    lat = latency(client, args.requests, sql_popular)
    print(
        f"SQL only, popular_ads top 100, M = 60: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    cfg_cached = cfg.model_copy(update={"popular_cache_s": 5.0})
    app.dependency_overrides[api.adclicks_config] = lambda: cfg_cached
    fixed = {"topN": 100, "window": 60, "to": end.isoformat()}
    lat = latency(client, args.requests, lambda: client.get("/v1/ads/popular_ads", params=fixed))
    print(f"popular_ads top 100, M = 60, cached: p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")
    print(f"{load_average()}; raw store: {tp['valid_distinct']:,} clicks; date {today()}")


def ab(revs: list[str], trials: int, clicks: int) -> None:
    """Throughput of several revisions in alternating trials: each trial a fresh process
    (its own broker, Redis and chDB) running this script on a checkout of the revision."""
    repo = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="clickflow-ab-adclicks-"))
    srcs: dict[str, Path] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # remove the checkouts on a kill
    try:
        for rev in revs:
            if rev == ".":
                srcs[rev] = repo / "src"
                continue
            tree = work / f"tree{len(srcs)}"
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev],
                check=True,
                capture_output=True,
            )
            srcs[rev] = tree / "src"
        results: dict[str, list[dict]] = {rev: [] for rev in revs}
        for trial in range(trials):
            for rev in revs:
                out = work / "result.json"
                load = load_average()
                subprocess.run(
                    [sys.executable, __file__, "--throughput-only", "--clicks", str(clicks)]
                    + ["--json", str(out)],
                    check=True,
                    capture_output=True,
                    env={**os.environ, "PYTHONPATH": str(srcs[rev])},
                )
                r = json.loads(out.read_text())
                results[rev].append(r)
                cpu = r["cpu_us_per_click"]
                print(
                    f"trial {trial + 1} {rev}: {r['pipeline_per_s']:,.0f} clicks/s, CPU/click "
                    f"{cpu['pipeline']:.1f} us pipeline + {cpu['servers']:.1f} us servers "
                    f"({load} before)",
                    flush=True,
                )
        print(f"medians of {trials} trials, {clicks:,} clicks, {machine()}, {today()}:")
        for rev, rs in results.items():
            med = statistics.median
            print(
                f"  {rev}: {med(r['pipeline_per_s'] for r in rs):,.0f} clicks/s, CPU/click "
                f"{med(r['cpu_us_per_click']['pipeline'] for r in rs):.1f} us pipeline + "
                f"{med(r['cpu_us_per_click']['servers'] for r in rs):.1f} us servers"
            )
    finally:
        for rev, src in srcs.items():
            if rev != ".":
                subprocess.run(
                    ["git", "-C", str(repo), "worktree", "remove", "--force", str(src.parent)],
                    capture_output=True,
                )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
