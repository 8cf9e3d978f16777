"""What tracing costs per record, off (the default) and on: micro-benchmarks of its hooks.

Off, the hooks are: one flag check per collector request (publish), no wrapper around a
pipeline's handler, and one no-op context manager per store write (a chunk of records).
On, each request gets two spans and its records a traceparent header, each batch a span
that reads every record's headers. Spans go to an exporter that drops them, so the export
itself (a batch processor's background thread, then the network) is not counted.

Run: python bench/tracing_cost.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from _common import load_average, machine, today  # noqa: E402
from confluent_kafka import KafkaException  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402

from clickflow.collector.publisher import KafkaPublisher, _Pending  # noqa: E402
from clickflow.observability import tracing  # noqa: E402


class DropExporter(SpanExporter):
    def export(self, spans) -> SpanExportResult:  # noqa: ANN001
        return SpanExportResult.SUCCESS


class InstantProducer:
    """librdkafka stand-in: acknowledges every record at once (the broker is not measured)."""

    def produce(self, topic, value, key, on_delivery, headers=None) -> None:  # noqa: ANN001
        on_delivery(None, None)


class FakeMessage:
    def __init__(self, headers: list | None) -> None:
        self._headers = headers

    def headers(self) -> list | None:
        return self._headers


class FakeBatch:
    def __init__(self, msgs: list[FakeMessage]) -> None:
        self.msgs = msgs

    def __len__(self) -> int:
        return len(self.msgs)

    def messages(self):  # noqa: ANN201
        return iter(self.msgs)


class NullHandler:
    def handle(self, batch: FakeBatch) -> list:
        with tracing.store_span("clickhouse", "t", len(batch)):
            return []


class UnhookedPublisher(KafkaPublisher):
    """The baseline: ``publish`` exactly as it is without the tracing hook."""

    async def publish(self, topic, records, headers=None):  # noqa: ANN001, ANN201
        loop = asyncio.get_running_loop()
        pending = _Pending(len(records), loop.create_future(), self)
        produce, delivered = self._producer.produce, pending.delivered
        for i, (key, value) in enumerate(records):
            try:
                produce(topic, value, key, on_delivery=partial(delivered, i))
                self.in_flight += 1
            except BufferError:
                pending.done(i, "the producer queue is full")
            except KafkaException as e:
                pending.done(i, f"produce failed: {e}")
        if self._timer is None and self.in_flight:
            self._timer = loop.call_later(self._poll_interval, self._poll, loop)
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self._timeout)
        except TimeoutError:
            return list(pending.errors)


class UnhookedHandler:
    def handle(self, batch: FakeBatch) -> list:
        return []


def publisher(cls: type[KafkaPublisher] = KafkaPublisher) -> KafkaPublisher:
    p = cls.__new__(cls)
    p._producer = InstantProducer()  # type: ignore[assignment]
    p._timeout, p._poll_interval, p.in_flight, p._timer = 5.0, 0.001, 0, None
    return p


def ab(a, b, n: int, rounds: int) -> tuple[float, float, float]:  # noqa: ANN001
    """Seconds per call of ``a`` and ``b`` (interleaved rounds, alternating which goes first,
    so load drifts and warm-up hit both) and the median of the per-round differences a - b."""
    ta, tb, diff = [], [], []
    for i in range(rounds):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t0 = time.perf_counter()
        first(n)
        t1 = time.perf_counter()
        second(n)
        t2 = time.perf_counter()
        x, y = (t1 - t0) / n, (t2 - t1) / n
        if i % 2:
            x, y = y, x
        ta.append(x)
        tb.append(y)
        diff.append(x - y)
    return statistics.median(ta), statistics.median(tb), statistics.median(diff)


def measure(rounds: int) -> dict[str, tuple[float, float, float]]:
    loop = asyncio.new_event_loop()
    hooked, unhooked = publisher(), publisher(UnhookedPublisher)
    one = [(b"user", b"x" * 300)]
    thousand = one * 1000
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # Batches of 1,000 records from 1,000 requests (distinct trace contexts) or untraced.
    traced_batch = FakeBatch(
        [FakeMessage([("traceparent", tp[:36] + b"%016x" % i + tp[52:])]) for i in range(1000)]
    )
    plain_batch = FakeBatch([FakeMessage(None) for _ in range(1000)])

    def requests(pub: KafkaPublisher, records: list):  # noqa: ANN202
        async def run(n: int) -> None:
            for _ in range(n):
                await pub.publish("t", records)

        return lambda n: loop.run_until_complete(run(n))

    def batches(handler, batch: FakeBatch):  # noqa: ANN001, ANN202
        def run(n: int) -> None:
            for _ in range(n):
                handler.handle(batch)

        return run

    out = {}
    for state in ("off", "on"):
        if state == "on":
            tracing.setup("bench", exporter=DropExporter())
        out[f"request_1_{state}"] = ab(requests(hooked, one), requests(unhooked, one), 3000, rounds)
        out[f"request_1000_{state}"] = ab(
            requests(hooked, thousand), requests(unhooked, thousand), 30, rounds
        )
        handler = tracing.traced("bench", NullHandler())
        batch = traced_batch if state == "on" else plain_batch
        out[f"batch_1000_{state}"] = ab(
            batches(handler, batch), batches(UnhookedHandler(), batch), 200, rounds
        )
    tracing.shutdown()
    loop.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    before = load_average()
    r = measure(args.rounds)
    print(f"{machine()}, {today()}; {before} before, {load_average()} after")
    print(f"medians of {args.rounds} interleaved rounds; hooked vs the same code without hooks")
    rows = [
        ("collector request, 1 record", "request_1", 1),
        ("collector request, 1,000 records", "request_1000", 1000),
        ("pipeline batch, 1,000 records, 1 write", "batch_1000", 1000),
    ]
    for state in ("off", "on"):
        print(f"tracing {state}:")
        for label, key, n in rows:
            hooked, base, diff = r[f"{key}_{state}"]
            print(
                f"  {label:40s} {hooked * 1e6:9.2f} us vs {base * 1e6:9.2f} us: "
                f"{diff / n * 1e9:+9.1f} ns per record ({diff / base * 100:+.2f}%)"
            )


if __name__ == "__main__":
    main()
