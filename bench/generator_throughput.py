"""Generator throughput to the embedded broker, async and batch patterns, with N worker
processes (``clickflow generate --workers N``). Goal: >= 150,000 events/s on this 2-core machine.

    .venv/bin/python bench/generator_throughput.py [--workers 1 2] [--seconds 10]

events/s = events acknowledged by the broker / seconds from the first worker's start to the
last worker's end, including the final flush."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import embedded_broker, load_average, machine, today  # noqa: E402

from clickflow.config import Settings  # noqa: E402
from clickflow.domains.pageviews.traffic import PageViewFactory  # noqa: E402
from clickflow.generator.engine import Engine  # noqa: E402
from clickflow.generator.modes import RateModel  # noqa: E402
from clickflow.generator.options import GeneratorOptions, Mix  # noqa: E402
from clickflow.generator.workers import WorkerPool  # noqa: E402


def run(settings: Settings, pattern: str, workers: int, seconds: float) -> tuple[float, int]:
    """(events/s acknowledged, events acknowledged) of one run at an unreachable rate."""
    factory = PageViewFactory(topic=f"bench-gen-{pattern}-{workers}")
    domain = f"bench-{pattern}"
    rates = RateModel(mode="fixed", rate=10_000_000)
    mix = Mix(0.05, 0.01)
    options = GeneratorOptions(pattern=pattern, batch_size=10_000, batch_ms=50)
    if workers == 1:  # the engine in this process, as `clickflow generate` without --workers
        engine = Engine(settings, factory, domain, rates, mix, options)
        started = time.monotonic()
        stats = engine.run(duration=seconds)
        elapsed = time.monotonic() - started
        engine.close()
    else:
        pool = WorkerPool(settings, factory, domain, workers, rates, mix, options)
        stats = pool.run(duration=seconds)
        elapsed = pool.elapsed()
        pool.close()
        if pool.failure:
            raise SystemExit(pool.failure)
    return stats.acked / elapsed, stats.acked


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[os.cpu_count() or 1],
        help="worker process counts to measure (default: one per core)",
    )
    args = ap.parse_args()
    rows = []
    with embedded_broker() as bootstrap:
        settings = Settings(kafka_bootstrap=bootstrap)
        for workers in args.workers:
            for pattern in ("async", "batch"):
                rate, n = run(settings, pattern, workers, args.seconds)
                print(
                    f"{workers} worker(s) {pattern:6s} {rate:,.0f} events/s acked "
                    f"({n:,} events, {args.seconds:.0f} s)",
                    flush=True,
                )
                rows.append((workers, pattern, rate))
    m = f"{machine()}, {load_average()}"
    print(f"machine: {m}, {today()}")
    (Path(__file__).parent / "results" / "generator.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        + "".join(
            f"| generator to embedded broker, {p} pattern, {w} worker process"
            f"{'es' if w > 1 else ''} (page views, ~300 B) | "
            f">= 150,000 ev/s | {r:,.0f} ev/s | {m} | {today()} |\n"
            for w, p, r in rows
        )
    )


if __name__ == "__main__":
    main()
