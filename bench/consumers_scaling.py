"""Page views, exactly-once, with 1 and 2 consumers of one group on the embedded stack (threads
sharing the one chDB and the pipeline's writer threads, as `clickflow serve --consumers N`):
events/s from the broker to the rollups, CPU seconds of this process per event, chunk inserts
(one per chunk, counted in the intent log) and voluntary context switches of this process per
event. Issue 20's goal: 2 consumers are not slower than 1.

Each run is a fresh process with its own broker, Redis and chDB, filled before the consumers
start; the clock starts once every consumer owns partitions (the group's first rebalances are
not counted) and stops when every partition is committed to its end. The counts take turns
going first; the figure is the median of the trials.

    .venv/bin/python bench/consumers_scaling.py --events 400000 --trials 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_average, machine, today  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from pageviews_pipeline import fill, own_stores  # noqa: E402

from clickflow.config import Settings  # noqa: E402
from clickflow.domains.pageviews.pipeline import pipeline_handler  # noqa: E402
from clickflow.exactly_once.intent_log import ClickHouseIntentLog  # noqa: E402
from clickflow.kafka.batch import BatchTrigger, Delivery  # noqa: E402
from clickflow.kafka.config import consumer_config, producer_config  # noqa: E402
from clickflow.kafka.consumer import BatchConsumer  # noqa: E402
from clickflow.kafka.producer import EventProducer  # noqa: E402
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics  # noqa: E402
from clickflow.stores.clickhouse import clickhouse_client  # noqa: E402

PARTITIONS = 4


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    c = Consumer(consumer_config(settings, f"ends-{topic}"))
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def committed(consumers: list[BatchConsumer]) -> dict[int, int]:
    """The furthest commit of each partition, whichever consumer made it."""
    out: dict[int, int] = {}
    for c in consumers:
        for (_t, p), offset in list(c._committed.items()):
            out[p] = max(out.get(p, 0), offset)
    return out


def context_switches() -> int:
    """Voluntary context switches of every thread of this process so far."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            continue
    return total


def chunks_recorded(settings: Settings, group: str) -> int:
    """Chunks recorded in the intent log (exactly-once: one insert into page_views_raw each)."""
    return int(
        clickhouse_client(settings).command(
            "SELECT count() FROM consumer_intents "
            "WHERE group_id = {g:String} AND first_offset >= 0",
            parameters={"g": group},
        )
    )


def run(settings: Settings, n: int, events: int) -> dict[str, float]:
    topic = f"bench-scaling-{n}"
    ensure_topics(
        settings.kafka_bootstrap, [TopicSpec(topic, PARTITIONS), TopicSpec(dlq_topic(topic))]
    )
    print(f"  producing {events:,} page views to {topic} ...", flush=True)
    fill(settings, topic, events)
    ends = end_offsets(settings, topic)
    consumers = [
        BatchConsumer(
            name=f"bench-scaling-{i}",
            topics=[topic],
            handler=pipeline_handler(settings),
            consumer_conf=consumer_config(settings, f"bench-{topic}"),
            dlq_producer=EventProducer(producer_config(settings)),
            trigger=BatchTrigger(max_records=10_000, max_seconds=1.0),
            delivery=Delivery.EXACTLY_ONCE,
            intent_log=ClickHouseIntentLog(settings),
        )
        for i in range(n)
    ]
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    # Every consumer owns partitions and together they own them all.
    while not (
        all(c._epochs for c in consumers)
        and sorted(p for c in consumers for _t, p in list(c._epochs)) == list(range(PARTITIONS))
    ):
        assert time.monotonic() < deadline, "the group never settled"
        time.sleep(0.01)
    t0, cpu0, switches0 = time.perf_counter(), time.process_time(), context_switches()
    start = sum(committed(consumers).values())
    chunks0 = chunks_recorded(settings, f"bench-{topic}")
    while any(committed(consumers).get(p, 0) < e for p, e in ends.items()):
        assert time.monotonic() < deadline + 600, "the consumers did not catch up"
        time.sleep(0.01)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    switches = context_switches() - switches0
    for c in consumers:
        c.stop()
    for t in threads:
        t.join(60)
    done = sum(ends.values()) - start
    # Chunks recorded since the group settled: an in-flight batch cut just before may be
    # counted or not, a few chunks of the whole.
    chunks = chunks_recorded(settings, f"bench-{topic}") - chunks0
    print(f"  {n} consumer(s): {done:,} events after the group settled in {elapsed:.1f} s")
    return {
        "rate": done / elapsed,
        "cpu_us_per_event": cpu / done * 1e6,
        "inserts_per_10k": chunks / done * 1e4,
        "switches_per_1k": switches / done * 1e3,
    }


def one_run(n: int, events: int) -> dict[str, float]:
    with own_stores("bench") as settings:
        return run(settings, n, events)


def run_in_fresh_process(n: int, events: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(n), "--events", str(events)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.splitlines()
    for line in out[:-1]:
        print(line)
    return json.loads(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--trials", type=int, default=3, help="runs per consumer count (median)")
    ap.add_argument("--counts", default="1,2", help="consumer counts to compare")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.events)))
        return
    counts = [int(c) for c in args.counts.split(",")]
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    loads = []
    for trial in range(args.trials):
        for n in counts if trial % 2 == 0 else counts[::-1]:
            r = run_in_fresh_process(n, args.events)
            results[n].append(r)
            loads.append(load_average())
            print(
                f"{n} consumer(s), trial {trial + 1}: {r['rate']:,.0f} events/s, "
                f"{r['cpu_us_per_event']:.1f} µs CPU/event, "
                f"{r.get('inserts_per_10k', 0):.1f} chunk inserts per 10k events, "
                f"{r.get('switches_per_1k', 0):.0f} context switches per 1k events "
                f"({loads[-1]})",
                flush=True,
            )
    m = f"{machine()}, {load_average()}"
    rows = []
    for n in counts:
        rates = [r["rate"] for r in results[n]]
        cpu = statistics.median(r["cpu_us_per_event"] for r in results[n])
        inserts = statistics.median(r.get("inserts_per_10k", 0) for r in results[n])
        trials = " / ".join(f"{r / 1000:.0f}k" for r in rates)
        print(f"{n} consumer(s): {statistics.median(rates):,.0f} events/s (median of {trials})")
        goal = "-" if n == counts[0] else f"not slower than {counts[0]} consumer(s)"
        rows.append(
            f"| page views broker -> rollups, exactly-once, {n} consumer(s) of one group "
            f"({args.events:,} events, median of {args.trials}: {trials}; {cpu:.1f} µs CPU of "
            f"the process per event, {inserts:.1f} chunk inserts per 10k events) | {goal} "
            f"| {statistics.median(rates):,.0f} ev/s | {m} | {today()} |\n"
        )
    print(f"machine: {m}, {today()}")
    (Path(__file__).parent / "results" / "consumers_scaling.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n" + "".join(rows)
    )


if __name__ == "__main__":
    main()
