"""Bare consumer framework throughput: 1M 400-byte JSON records from the embedded broker,
decoded (msgspec), handed to a no-op sink, offsets committed. Goal: >= 300k records/s."""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _common import embedded_broker, load_average, machine, today  # noqa: E402

from clickflow.config import Settings  # noqa: E402
from clickflow.kafka.batch import Batch, BatchTrigger  # noqa: E402
from clickflow.kafka.config import consumer_config, producer_config  # noqa: E402
from clickflow.kafka.consumer import BatchConsumer  # noqa: E402
from clickflow.kafka.dlq import DeadLetter  # noqa: E402
from clickflow.kafka.producer import EventProducer  # noqa: E402
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics  # noqa: E402


class Record(msgspec.Struct):
    page_id: str
    user_id: str
    view_duration_ms: int
    timestamp: str
    user_agent: str
    ip_address: str
    region: str
    is_bounce: bool


class NoopSink:
    def __init__(self) -> None:
        self.decoder = msgspec.json.Decoder(Record)
        self.count = 0

    def handle(self, batch: Batch) -> list[DeadLetter]:
        decode = self.decoder.decode
        for chunk in batch.chunks:
            for m in chunk.messages:
                decode(m.value())
            self.count += len(chunk.messages)
        return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=3, help="consumer groups reading the same 1M")
    args = ap.parse_args()
    with embedded_broker() as bootstrap:
        settings = Settings(kafka_bootstrap=bootstrap)
        topic = "bench-consumer"
        ensure_topics(bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
        value = orjson.dumps(
            {
                "page_id": "/catalog/123",
                "user_id": "u0123456789ab",
                "view_duration_ms": 123456,
                "timestamp": "2026-11-24T04:40:11.996Z",
                "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 " + "x" * 90,
                "ip_address": "203.0.113.77",
                "region": "eu-west",
                "is_bounce": False,
            }
        )
        producer = EventProducer(producer_config(settings, **{"linger.ms": 20}))
        t0 = time.perf_counter()
        for i in range(args.records):
            producer.send(topic, value, key=str(i % 1000).encode())
            if i % 100_000 == 0:
                producer.poll(0)
        producer.flush(120)
        produce_s = time.perf_counter() - t0
        rates = []
        for trial in range(args.trials):
            sink = NoopSink()
            consumer = BatchConsumer(
                name="bench",
                topics=[topic],
                handler=sink,
                consumer_conf=consumer_config(settings, f"bench-group-{trial}"),
                # Its own: a consumer closes its DLQ producer when it stops.
                dlq_producer=EventProducer(producer_config(settings)),
                trigger=BatchTrigger(max_records=args.batch, max_seconds=1.0),
            )
            th = threading.Thread(target=consumer.run, daemon=True)
            th.start()
            consumer.ready.wait(60)
            # From partition assignment to the last record handled: the group join is not
            # counted, the first fetches are.
            t1 = time.perf_counter()
            while sink.count < args.records:
                time.sleep(0.005)
            elapsed = time.perf_counter() - t1
            consumer.stop()
            th.join(30)
            rates.append(args.records / elapsed)
            print(
                f"trial {trial + 1}: {rates[-1]:,.0f} records/s, {consumer.stats.commits} commits"
            )
        rate = statistics.median(rates)
    print(f"value size           {len(value)} bytes")
    print(f"produce              {args.records / produce_s:,.0f} records/s")
    print(f"consume+decode+commit {rate:,.0f} records/s, median of {args.trials} (goal >= 300,000)")
    print(f"machine              {machine()}, {load_average()}, {today()}")
    results = Path(__file__).parent / "results" / "foundation.md"
    results.write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        f"| consumer framework, 1M x {len(value)} B records: consume+decode+commit "
        f"(median of {args.trials}) | "
        f">= 300,000 rec/s | {rate:,.0f} rec/s | {machine()}, {load_average()} | {today()} |\n"
    )


if __name__ == "__main__":
    main()
