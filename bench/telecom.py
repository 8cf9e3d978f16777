"""Telecom bench: sustained events/s into PostgreSQL with dedup, the verify report, and the
API's p99 for cached and uncached aggregates (HTTP and gRPC).

    .venv/bin/python bench/telecom.py [--events 300000] [--ingestors 1]

Starts its own tansu broker, embedded PostgreSQL and Redis in a temp directory. The
ingestor and the aggregator run as `clickflow process` subprocesses (as `clickflow up`
runs them), the producer and the API client in this process.
"""

from __future__ import annotations

import argparse
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg
from _common import load, machine

from clickflow.config import Settings
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.migrations import migrate_postgres
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port
from clickflow.runtime.postgres_server import start_postgres
from clickflow.runtime.redis_server import start_redis


def produce(settings: Settings, topic: str, n: int, dup_share: float, seed: int) -> int:
    """n records (dup_share of them resends), events spread over the last 60 days."""
    rng = random.Random(seed)
    f = TelecomFactory(users=10_000, topic=topic, seed=seed)
    p = EventProducer(producer_config(settings, **{"linger.ms": 20}))
    recent: list[tuple[bytes, bytes]] = []
    unique = 0
    now = time.time()
    for _ in range(n):
        if recent and rng.random() < dup_share:
            key, value = rng.choice(recent)
        else:
            ev = f.make(rng, datetime.fromtimestamp(now - rng.uniform(0, 60 * 86400), UTC))
            ev["started_at"] = ev["started_at"][:19] + "Z"
            key, value = ev["user_id"].encode(), orjson.dumps(ev)
            unique += 1
            if len(recent) < 5000:
                recent.append((key, value))
            else:
                recent[rng.randrange(5000)] = (key, value)
        p.send(topic, value, key=key)
    assert p.flush(120) == 0
    return unique


def spawn(
    settings: Settings, name: str, topic: str, log: Path, records: int = 20000, seconds: float = 0.5
) -> subprocess.Popen:
    env = {
        **os.environ,
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_POSTGRES_URL": settings.postgres_url or "",
        "CLICKFLOW_REDIS_URL": settings.redis_url or "",
        "CLICKFLOW_TELECOM_TOPIC": topic,
        "CLICKFLOW_DATA_DIR": str(settings.data_dir),
        "CLICKFLOW_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "clickflow", "process", name, "--records", str(records)]
    cmd += ["--seconds", str(seconds), "--group", f"bench-{name}-{topic}"]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def scalar(url: str, sql: str):
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def wait_rows(url: str, table: str, target: int, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (scalar(url, f"SELECT count(*) FROM telecom.{table}") or 0) >= target:  # noqa: S608
            return time.time()
        time.sleep(0.5)
    raise TimeoutError(f"{table} did not reach {target} rows in {timeout}s")


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    """User + system CPU seconds of the processes (and their children) alive now."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if children else [proc]
        except psutil.Error:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def sustained(settings: Settings, events: int, ingestors: int, work: Path, pg_pid: int = 0) -> dict:
    """Pre-filled topic, then the ingestor(s) drain it: records/s through dedup into PG.

    CPU per event is counted from the first stored row (the ingestor's start-up excluded)
    to the last, for the ingestor process(es) and for PostgreSQL (every server process)."""
    url = settings.postgres_url or ""
    topic = f"bench-telecom-{int(time.time())}"
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 8)])
    t = time.time()
    unique = produce(settings, topic, events, 0.1, seed=1)
    produce_s = time.time() - t
    procs = [
        spawn(settings, "telecom-ingest", topic, work / "ingest.log") for _ in range(ingestors)
    ]
    try:
        wait_rows(url, "events_raw", 1, timeout=600)
        stored0 = scalar(url, "SELECT count(*) FROM telecom.events_raw") or 0
        ingest0 = cpu_seconds([p.pid for p in procs])
        pg0 = cpu_seconds([pg_pid], children=True) if pg_pid else 0.0
        wait_rows(url, "events_raw", unique, timeout=600)
        done = max(1, unique - stored0)
        ingest_cpu_us = (cpu_seconds([p.pid for p in procs]) - ingest0) / done * 1e6
        pg_cpu_us = ((cpu_seconds([pg_pid], children=True) - pg0) / done * 1e6) if pg_pid else 0.0
    finally:
        stop(procs)
    first, last = (
        scalar(url, "SELECT extract(epoch FROM min(ingested_at)) FROM telecom.events_raw"),
        scalar(url, "SELECT extract(epoch FROM max(ingested_at)) FROM telecom.events_raw"),
    )
    span = float(last) - float(first)
    # the aggregator (second consumer group) over the same records
    t = time.time()
    agg = [spawn(settings, "telecom-aggregate", topic, work / "aggregate.log")]
    try:
        wait_rows(url, "agg_applied", unique, timeout=600)
        agg_s = time.time() - t
    finally:
        stop(agg)
    return {
        "records": events,
        "unique": unique,
        "produce_per_s": events / produce_s,
        "ingest_span_s": span,
        "ingest_records_per_s": events / span,
        "ingest_unique_per_s": unique / span,
        "ingest_cpu_us_per_stored_event": ingest_cpu_us,
        "postgres_cpu_us_per_stored_event": pg_cpu_us,
        "aggregate_wall_s_incl_start": agg_s,
        "aggregate_records_per_s_incl_start": events / agg_s,
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1000, s[int(len(s) * 0.99) - 1] * 1000


def api_latency(settings: Settings, n: int) -> dict:
    import grpc
    import uvicorn
    from fastapi import FastAPI

    from clickflow.domains.telecom.api import router
    from clickflow.domains.telecom.grpc_server import start_server
    from clickflow.domains.telecom.proto import telecom_pb2 as pb
    from clickflow.domains.telecom.proto import telecom_pb2_grpc as pb_grpc

    os.environ["CLICKFLOW_TELECOM_RATE_LIMIT_PER_S"] = "0"
    from clickflow.domains.telecom.config import telecom_config

    telecom_config.cache_clear()
    app = FastAPI()
    app.state.settings = settings
    app.include_router(router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    gport = free_port()
    gserver = start_server(settings, port=gport)
    stub = pb_grpc.TelecomUsageStub(grpc.insecure_channel(f"127.0.0.1:{gport}"))
    today = datetime.now(UTC).date()
    out: dict = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:

        def http(params: dict) -> float:
            t = time.perf_counter()
            r = client.get("/api/v1/aggregates", params=params)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            return dt

        def rpc(params: dict) -> float:
            req = pb.GlobalAggRequest(granularity=params["granularity"], to=params["to"])
            setattr(req, "from", params["from"])  # noqa: B010
            t = time.perf_counter()
            stub.GetGlobalAgg(req)
            return time.perf_counter() - t

        cached = {"granularity": "day", "from": str(today - timedelta(days=30)), "to": str(today)}
        for name, fn in (("http", http), ("grpc", rpc)):
            fn(cached)
            hits = [fn(cached) for _ in range(n)]
            # uncached: every request a window not asked before (a cache miss: PostgreSQL)
            misses = []
            for i in range(n):
                end = today - timedelta(days=i % 60)
                start = date(2000, 1, 1) + timedelta(days=i + (0 if name == "http" else n))
                misses.append(fn({"granularity": "day", "from": str(start), "to": str(end)}))
            out[name] = {
                "cached_p50_ms": percentiles(hits)[0],
                "cached_p99_ms": percentiles(hits)[1],
                "uncached_p50_ms": percentiles(misses)[0],
                "uncached_p99_ms": percentiles(misses)[1],
            }
    server.should_exit = True
    gserver.stop(grace=None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--ingestors", type=int, default=1)
    ap.add_argument("--verify-events", type=int, default=60_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument(
        "--ingest-only",
        action="store_true",
        help="the sustained ingest and aggregation only (A/B trials), no verify or API part",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clickflow-bench-telecom-"))
    os.environ.setdefault("TMPDIR", str(work))
    procs: list[tuple[subprocess.Popen, int]] = []
    kport = free_port()
    procs.append((start_broker("127.0.0.1", kport, work / "logs"), signal.SIGTERM))
    pg, pg_url = start_postgres(work / "postgres" / "data")
    procs.append((pg, signal.SIGINT))
    rd, rd_url = start_redis(work / "redis")
    procs.append((rd, signal.SIGTERM))
    settings = Settings(
        data_dir=work,
        kafka_bootstrap=f"127.0.0.1:{kport}",
        postgres_url=pg_url,
        redis_url=rd_url,
    )
    try:
        migrate_postgres(settings, ["telecom"])
        print(
            f"== sustained ingest: {args.events:,} records (10% duplicates), "
            f"{args.ingestors} ingestor process(es)",
            flush=True,
        )
        s = sustained(settings, args.events, args.ingestors, work, pg.pid)
        for k, v in s.items():
            print(f"  {k:36s} {v:,.1f}" if isinstance(v, float) else f"  {k:36s} {v:,}")
        print(f"  {'machine':36s} {machine()}, {load()}", flush=True)
        if args.ingest_only:
            return

        from clickflow.domains.telecom.verify import run_verify

        for rate, n in ((5000.0, args.verify_events), (0.0, args.verify_events)):
            label = f"{rate:,.0f}/s (the seed's load test)" if rate else "full speed"
            print(
                f"== verify mode: {n:,} events, 10% duplicates, {label}, ingestor running",
                flush=True,
            )
            topic = f"bench-verify-{int(time.time())}-{int(rate)}"
            ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 8)])
            ing = [
                spawn(
                    settings,
                    "telecom-ingest",
                    topic,
                    work / "verify-ingest.log",
                    records=5000,
                    seconds=0.1,
                )
            ]
            try:
                # warm-up: wait until the ingestor has joined and writes
                run_verify(settings, events=10, duplicate_share=0, topic=topic, timeout=60)
                report = run_verify(
                    settings, events=n, duplicate_share=0.1, topic=topic, rate=rate, timeout=300
                )
            finally:
                stop(ing)
            for line in report.lines():
                print("  " + line)

        print(f"== API latency, {args.requests} sequential requests each", flush=True)
        lat = api_latency(settings, args.requests)
        for proto, figures in lat.items():
            for k, v in figures.items():
                print(f"  {proto:5s} {k:18s} {v:.2f}")
    finally:
        for p, sig in procs:
            try:
                p.send_signal(sig)
                p.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                p.kill()
        shutil.rmtree(work, ignore_errors=True)  # ~400 MB of PostgreSQL and broker data


if __name__ == "__main__":
    main()
