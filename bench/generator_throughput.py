"""Generator throughput to the embedded broker, async and batch patterns.
Goal: >= 150,000 events/s on this 2-core machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import embedded_broker, load_average, machine, today  # noqa: E402

from clickflow.config import Settings  # noqa: E402
from clickflow.domains.pageviews.traffic import PageViewFactory  # noqa: E402
from clickflow.generator.engine import Engine, GeneratorOptions, Mix  # noqa: E402
from clickflow.generator.modes import RateModel  # noqa: E402


def run(settings: Settings, pattern: str, seconds: float) -> tuple[float, int]:
    engine = Engine(
        settings,
        PageViewFactory(topic=f"bench-gen-{pattern}"),
        f"bench-{pattern}",
        RateModel(mode="fixed", rate=10_000_000),
        Mix(0.05, 0.01),
        GeneratorOptions(pattern=pattern, batch_size=10_000, batch_ms=50),
    )
    stats = engine.run(duration=seconds)
    engine.close()
    return stats.acked / (stats.started and seconds), stats.acked


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    rows = []
    with embedded_broker() as bootstrap:
        settings = Settings(kafka_bootstrap=bootstrap)
        for pattern in ("async", "batch"):
            rate, n = run(settings, pattern, args.seconds)
            print(f"{pattern:6s} {rate:,.0f} events/s acked ({n:,} events in {args.seconds:.0f} s)")
            rows.append((pattern, rate))
    m = f"{machine()}, {load_average()}"
    print(f"machine: {m}, {today()}")
    (Path(__file__).parent / "results" / "generator.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        + "".join(
            f"| generator to embedded broker, {p} pattern (page views, ~300 B) | "
            f">= 150,000 ev/s | {r:,.0f} ev/s | {m} | {today()} |\n"
            for p, r in rows
        )
    )


if __name__ == "__main__":
    main()
