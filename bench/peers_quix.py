"""Peers side by side: the page-view minute aggregation by clickflow and by Quix Streams.

One run, one embedded broker (tansu), one topic, the same events: N page views (~400 B: the
clickflow.domains.pageviews.traffic.PageViewFactory's, plus a referrer) produced once with
event times spread over 20 minutes (the Kafka message timestamp is the event's own
timestamp), then aggregated to "views and unique users per page per minute" by

(a) clickflow: the production page-view pipeline (`build_consumer` of the `pageviews`
    PipelineSpec: BatchConsumer + PageViewHandler, its default hybrid trigger, exactly-once
    with the ClickHouse intent log, Redis dedup claims) into chDB: raw table + minute rollup
    by materialized view;
(b) Quix Streams (its own venv, see below): `tumbling_window(60 s)` with `Count()` and
    `Collect("user_id")` (unique users = the set size when the window closes), `.final()`,
    Application defaults otherwise (RocksDB state with changelog topics), once with
    processing_guarantee at-least-once (its default) and once exactly-once (Kafka
    transactions; what clickflow's figure is).

Each side runs alone (not concurrently) from the first record it sees to its last commit /
last window emitted; events/s = N / that time. Both answers are compared with each other and
with the truth computed while producing. One sentinel event per partition, 5 minutes after
the last one, closes Quix's last windows (stream time only moves with new records); it is
left out of every comparison.

Quix Streams 3.28 pins confluent-kafka < 2.13 and an older pydantic, which would downgrade the
project's own venv (confluent-kafka 2.16); so it runs in .clickflow/venv-quix, created on
first use (`pip install quixstreams`), as a subprocess of this script.

    .venv/bin/python bench/peers_quix.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUIX_VENV = HERE.parent / ".clickflow" / "venv-quix"
SPAN_S = 20 * 60
SENTINEL_PAGE = "/__end__"
# The factory's page views are ~317 B; a referrer (a field both sides ignore) brings them to
# the ~400 B of the issue.
REFERRERS = [
    f',"referrer":"https://www.{site}/search?q=clickflow+page+{n}&utm_source=newsletter"}}'.encode()
    for n, site in enumerate(["example.com", "news.example.org", "mail.example.net"] * 4)
]


# --------------------------------------------------------------------------- Quix side


def quix_side(args: argparse.Namespace) -> None:
    """Runs inside the Quix venv: aggregate, then write outputs and timings as JSON."""
    import logging

    from quixstreams import Application
    from quixstreams.dataframe.windows import Collect, Count

    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        processing_guarantee=args.guarantee,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="json")
    sdf = app.dataframe(topic)
    first: list[float] = []

    def mark(_value: dict) -> None:
        if not first:
            first.append(time.perf_counter())

    sdf = sdf.update(mark)
    window = sdf.tumbling_window(60_000).agg(count=Count(), users=Collect("user_id"))
    # "partition": a record closes the expired windows of every page of its partition (each
    # partition is in event-time order); the default "key" leaves a page's last window open
    # until that page is seen again.
    sdf = window.final(closing_strategy="partition")
    sdf = sdf.apply(
        lambda w: {"start": w["start"], "count": w["count"], "users": len(set(w["users"]))}
    )
    t0 = time.perf_counter()
    out = app.run(count=args.expected, timeout=120, metadata=True)
    end = time.perf_counter()
    rows = [
        [o["_key"].decode() if isinstance(o["_key"], bytes) else o["_key"], o["start"] // 1000]
        + [o["count"], o["users"]]
        for o in out
    ]
    Path(args.out).write_text(
        json.dumps({"rows": rows, "seconds": end - first[0], "with_join": end - t0})
    )


# --------------------------------------------------------------------------- clickflow side


def ensure_quix_venv() -> Path:
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {QUIX_VENV} with quixstreams (one-time) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    if subprocess.run([str(py), "-c", "import quixstreams"], capture_output=True).returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "quixstreams"], check=True)
    return py


def produce(bootstrap: str, topic: str, partitions: int, count: int, base: int):
    """Produce ``count`` page views over SPAN_S seconds from ``base``; returns the truth
    {(page, minute): (views, unique users)} and the mean event size."""
    import random

    from confluent_kafka import Producer

    from clickflow.domains.pageviews.traffic import PageViewFactory

    factory = PageViewFactory(topic=topic)
    rng = random.Random(11)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "log_level": 3,
        }
    )
    counts: dict[tuple[str, int], int] = {}
    users: dict[tuple[str, int], set[str]] = {}
    size = 0
    step = SPAN_S / count
    for i in range(count):
        now = base + i * step  # distinct milliseconds: no accidental duplicate content
        ev = factory.valid(rng, now)
        key = (ev.truth["page"], ev.truth["minute"])
        counts[key] = counts.get(key, 0) + 1
        users.setdefault(key, set()).add(ev.truth["user"])
        value = ev.value[:-1] + REFERRERS[i % len(REFERRERS)]
        size += len(value)
        while True:
            try:
                producer.produce(topic, value, ev.key, timestamp=int(now * 1000))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    end = base + SPAN_S + 300
    for p in range(partitions):  # closes the last windows of every partition (Quix)
        ev = factory.valid(rng, end)
        value = json.loads(ev.value)
        value["page_id"] = SENTINEL_PAGE
        producer.produce(
            topic, json.dumps(value).encode(), SENTINEL_PAGE.encode(), partition=p,
            timestamp=int(end * 1000),
        )  # fmt: skip
    producer.flush(60)
    truth = {k: (counts[k], len(users[k])) for k in counts}
    return truth, size / count


def run_clickflow(settings, count: int, partitions: int) -> tuple[float, dict]:
    from clickflow.domains.pageviews.pipeline import PIPELINES
    from clickflow.pipelines import build_consumer
    from clickflow.stores.clickhouse import clickhouse_client

    consumer = build_consumer(settings, PIPELINES[0])
    th = threading.Thread(target=consumer.run, daemon=True)
    th.start()
    consumer.ready.wait(60)
    while consumer.stats.records == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    total = count + partitions  # the sentinels too
    while consumer.stats.records < total or consumer._buffer or consumer._held:
        time.sleep(0.01)
    last = -1
    while last != consumer.stats.commits:  # the last batch's commit
        last = consumer.stats.commits
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0 - 0.2
    consumer.stop()
    th.join(30)
    del consumer  # and its DLQ producer, before the broker goes away
    result = clickhouse_client(settings).query(
        "SELECT page_id, toUnixTimestamp(window_start), sumMerge(view_count), "
        "uniqExactMerge(unique_users) FROM page_views_agg_minute GROUP BY 1, 2"
    )
    rows = {(p, int(m)): (int(c), int(u)) for p, m, c, u in result.result_rows}
    return count / elapsed, rows


def run_quix(
    bootstrap: str, topic: str, expected: int, work: Path, guarantee: str
) -> tuple[float, float, dict]:
    py = ensure_quix_venv()
    out = work / f"quix-{guarantee}.json"
    cmd = [
        str(py), __file__, "--quix-side", "--bootstrap", bootstrap, "--topic", topic,
        "--group", f"bench-quix-{guarantee}", "--guarantee", guarantee,
        "--expected", str(expected), "--state-dir", str(work / f"quix-state-{guarantee}"),
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, timeout=1800, env=env)
    data = json.loads(out.read_text())
    rows = {(p, int(m)): (int(c), int(u)) for p, m, c, u in data["rows"]}
    return data["seconds"], data["with_join"], rows


def diff(name: str, got: dict, truth: dict) -> str:
    got = {k: v for k, v in got.items() if k[0] != SENTINEL_PAGE}
    missing = set(truth) - set(got)
    extra = set(got) - set(truth)
    wrong = [k for k in set(truth) & set(got) if got[k] != truth[k]]
    if not (missing or extra or wrong):
        return ""
    k = (sorted(missing) + sorted(extra) + sorted(wrong))[0]
    return (
        f"{name}: {len(missing)} windows missing, {len(extra)} extra, {len(wrong)} wrong "
        f"(e.g. {k}: {got.get(k)} vs truth {truth.get(k)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--quix-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--quix-guarantees",
        default="at-least-once,exactly-once",
        help="Quix Streams processing_guarantee values to run, one run each",
    )
    for hidden in ("--bootstrap", "--topic", "--group", "--state-dir", "--out", "--guarantee"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quix_side:
        quix_side(args)
        return

    sys.path.insert(0, str(HERE))
    from _common import embedded_broker, load, machine_with_load, today

    from clickflow.config import Settings
    from clickflow.domains.pageviews.events import PAGEVIEWS_TOPIC
    from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
    from clickflow.logs import setup_logging
    from clickflow.migrations import migrate_clickhouse
    from clickflow.runtime.redis_server import start_redis

    setup_logging("WARNING")  # the pipeline's warnings with their fields (error, retry_in_s)
    # The broker and Redis run in their own sessions: on SIGTERM (the pipeline's time limit)
    # unwind through the finally blocks that stop them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="clickflow-bench-peers-"))
    os.environ["TMPDIR"] = str(work)  # chDB writes insert data to $TMPDIR
    ensure_quix_venv()
    redis_proc, redis_url = start_redis(work / "redis")
    try:
        with embedded_broker(str(work / "tansu")) as bootstrap:
            settings = Settings(
                kafka_bootstrap=bootstrap,
                redis_url=redis_url,
                clickhouse_dsn=f"chdb:///{work / 'ch'}",
                clickhouse_database="bench_peers",
            )
            topic, partitions = PAGEVIEWS_TOPIC, 4
            # With configs: Quix reads retention.ms through DescribeConfigs.
            ensure_topics(bootstrap, [TopicSpec(topic, partitions), TopicSpec(dlq_topic(topic))])
            base = (int(time.time()) // 60 - 30) * 60
            print(f"producing {args.events:,} page views to {topic} ...", flush=True)
            t0 = time.perf_counter()
            truth, size = produce(bootstrap, topic, partitions, args.events, base)
            print(
                f"  {time.perf_counter() - t0:.1f} s, mean {size:.0f} B/event, "
                f"{len(truth):,} page-minute windows",
                flush=True,
            )
            migrate_clickhouse(settings, ["pageviews"])
            print("clickflow page-view pipeline (exactly-once, chDB) ...", flush=True)
            cf_rate, cf_rows = run_clickflow(settings, args.events, partitions)
            cf_load = load()
            print(f"  clickflow: {cf_rate:,.0f} events/s ({cf_load})", flush=True)
            quix: dict[str, tuple[float, dict, str]] = {}
            for g in [g.strip() for g in args.quix_guarantees.split(",") if g.strip()]:
                print(f"Quix Streams, {g} (60 s tumbling window, count + unique users) ...")
                q_s, q_join_s, q_rows = run_quix(bootstrap, topic, len(truth), work, g)
                quix[g] = (args.events / q_s, q_rows, load())
                print(
                    f"  Quix Streams {g}: {args.events / q_s:,.0f} events/s ({q_s:.1f} s; "
                    f"{q_join_s:.1f} s with start-up and group join) ({quix[g][2]})",
                    flush=True,
                )
    finally:
        os.killpg(redis_proc.pid, signal.SIGTERM)
    answers = [("clickflow", cf_rows)] + [(f"Quix {g}", q[1]) for g, q in quix.items()]
    problems = [p for p in (diff(name, rows, truth) for name, rows in answers) if p]
    same = "same per-page-per-minute counts and unique users" if not problems else "DIFFERENT"
    print(f"answers: {same}" + "".join(f"; {p}" for p in problems))
    m = machine_with_load().rsplit("load ", 1)[0]
    check = "every answer equals the truth" if not problems else "; ".join(problems)
    lines = [
        "| figure | goal | value | machine | date |",
        "|---|---|---|---|---|",
        f"| peers: page views per page per minute (count + unique users), {args.events:,} "
        f"events of {size:.0f} B, clickflow pipeline (exactly-once, into chDB) | faster than "
        f"Quix Streams | {cf_rate:,.0f} ev/s ({check}) | {m}{cf_load} | {today()} |",
    ]
    version = quix_version()
    for g, (q_rate, _rows, q_load) in quix.items():
        ratio = cf_rate / q_rate
        print(f"ratio clickflow / Quix Streams {g}: {ratio:.1f}x")
        lines += [
            f"| peers: same aggregation, Quix Streams {version} {g} (60 s tumbling window, "
            f"Count + Collect, RocksDB state + changelog) | - | {q_rate:,.0f} ev/s "
            f"| {m}{q_load} | {today()} |",
            f"| peers: ratio clickflow exactly-once / Quix Streams {g}, same broker and data "
            f"| > 1 | {ratio:.1f}x | {m}{q_load} | {today()} |",
        ]
    (HERE / "results" / "peers.md").write_text("\n".join(lines) + "\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    if problems:
        raise SystemExit(1)


def quix_version() -> str:
    py = QUIX_VENV / "bin" / "python"
    r = subprocess.run(
        [str(py), "-c", "import quixstreams; print(quixstreams.__version__)"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() or "?"


if __name__ == "__main__":
    main()
