"""What tracing off and profiling off cost the page-view pipeline: an A/B at pipeline level.

Each trial runs the page-view pipeline bench (``pageviews_pipeline.throughput``: 1M events
from the broker to queryable rollups, own broker, Redis and chDB) in a fresh process, in one
of these variants, taking turns within each round:

* ``off``: as ``clickflow process`` runs it: tracing and profiling imported, ``tracing.setup``
  called with no OTLP endpoint (so off), the handler passed through ``tracing.traced``;
* ``no-tracing``: the tracing module replaced by a stub before anything imports it
  (``traced`` is the identity; the OpenTelemetry API stays, redis-py imports it itself);
* ``no-profiling``: the profiling module replaced by a stub (an empty router);
* ``none``: both replaced.

Besides events/s (wall) it reports the process's CPU seconds per event over the pipeline's
run (the generator's fill excluded) and the time spent in the garbage collector, which is
where a module that is imported but never called could cost something (a larger heap to
walk; the consumers freeze what exists when they start, see ``hot_loops``). The machine is
shared: compare the variants within one run, round by round.

Run: python bench/observability_off_cost.py [--trials 5] [--events 1000000] [--variants off,none]
[--write]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VARIANTS = ("off", "no-tracing", "no-profiling", "none")


def _stub_tracing() -> None:
    stub = types.ModuleType("clickflow.observability.tracing")
    stub.ENABLED = False  # type: ignore[attr-defined]
    stub.setup = lambda service, exporter=None: False  # type: ignore[attr-defined]
    stub.shutdown = lambda: None  # type: ignore[attr-defined]
    stub.traced = lambda pipeline, handler: handler  # type: ignore[attr-defined]
    stub.bind = lambda fn: fn  # type: ignore[attr-defined]
    stub.span = lambda *a, **kw: contextlib.nullcontext()  # type: ignore[attr-defined]
    stub.store_span = lambda *a, **kw: contextlib.nullcontext()  # type: ignore[attr-defined]
    sys.modules[stub.__name__] = stub


def _stub_profiling() -> None:
    from fastapi import APIRouter

    stub = types.ModuleType("clickflow.observability.profiling")
    stub.router = APIRouter()  # type: ignore[attr-defined]
    sys.modules[stub.__name__] = stub


class GcClock:
    """Wall time spent in garbage collections (gc.callbacks), and how many of each age."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def one(variant: str, events: int, delivery: str) -> dict:
    """One pipeline run in this (fresh) process."""
    if variant in ("no-tracing", "none"):
        _stub_tracing()
    if variant in ("no-profiling", "none"):
        _stub_profiling()
    sys.path.insert(0, str(BENCH))
    import pageviews_pipeline as pv

    import clickflow.observability.process_http  # noqa: F401 - /healthz, /metrics, /debug/profile
    from clickflow.kafka.batch import Delivery
    from clickflow.observability import tracing

    assert tracing.setup("process") is False, "tracing must be off (no OTLP endpoint)"
    assert (variant in ("no-tracing", "none")) == (tracing.__spec__ is None), "tracing stub"
    # redis-py imports parts of OpenTelemetry itself: counted, not asserted.
    otel = sum(m.startswith("opentelemetry") for m in sys.modules)
    handler_class = pv.PageViewHandler
    pv.PageViewHandler = lambda settings: tracing.traced("pageviews", handler_class(settings))
    probe = object()
    assert tracing.traced("pageviews", probe) is probe, "off: the handler itself, no wrapper"
    fill = pv.fill
    mark: dict[str, float] = {}

    clock = GcClock()

    def timed_fill(*args: object) -> None:
        fill(*args)
        gc.collect()
        mark["cpu"] = time.process_time()
        gc.callbacks.append(clock)  # the pipeline's collections only

    pv.fill = timed_fill
    with pv.own_stores("bench") as settings:
        rate = pv.throughput(settings, events, Delivery(delivery))
        cpu = time.process_time() - mark["cpu"]
        gc.callbacks.remove(clock)
    return {
        "variant": variant,
        "rate": rate,
        "cpu_us_per_event": cpu / events * 1e6,
        "gc_ms": clock.seconds * 1000,
        "gc_collections": clock.collections,
        "opentelemetry_modules": otel,
        "modules": len(sys.modules),
    }


def run_fresh(variant: str, events: int, delivery: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("CLICKFLOW_PROFILING", None)
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, "--events", str(events)]
        + ["--delivery", delivery],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ).stdout.splitlines()
    return json.loads(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5, help="runs per variant")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--delivery", default="exactly-once")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--write", action="store_true", help="append the table to results/tracing.md")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.events, args.delivery)))
        return
    sys.path.insert(0, str(BENCH))
    from _common import load_average, machine, today

    variants = args.variants.split(",")
    if variants[0] != "off" or not set(variants) <= set(VARIANTS):
        raise SystemExit(f"--variants: off first, then some of {', '.join(VARIANTS[1:])}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    loads = [os.getloadavg()[0]]
    for trial in range(args.trials):
        # Each round starts with the next variant: this machine reads slower as a long bench
        # goes on, which would otherwise count against whichever variant always ran last.
        order = variants[trial % len(variants) :] + variants[: trial % len(variants)]
        for v in order:
            r = run_fresh(v, args.events, args.delivery)
            runs[v].append(r)
            loads.append(os.getloadavg()[0])
            print(
                f"trial {trial + 1} {v:13s} {r['rate']:9,.0f} ev/s  "
                f"{r['cpu_us_per_event']:.2f} us CPU/event  gc {r['gc_ms']:.0f} ms "
                f"{r['gc_collections']}  modules {r['modules']} (otel {r['opentelemetry_modules']})"
                f"  load {loads[-1]:.1f}",
                flush=True,
            )
    lines = [
        f"`python bench/observability_off_cost.py --trials {args.trials} --events {args.events}"
        f" --delivery {args.delivery}`: {machine()}, {today()}, load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the run ({load_average()} at its end).",
        "",
        "| variant | events/s, median (trials) | CPU µs per event, median (trials) "
        "| GC ms per run, median | cost of off against it, median of the rounds' ratios: "
        "events/s lost, CPU per event added |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        rate = statistics.median(r["rate"] for r in runs[v])
        cpu = statistics.median(r["cpu_us_per_event"] for r in runs[v])
        gc_ms = statistics.median(r["gc_ms"] for r in runs[v])
        rates = " / ".join(f"{r['rate'] / 1000:.1f}k" for r in runs[v])
        cpus = " / ".join(f"{r['cpu_us_per_event']:.2f}" for r in runs[v])
        # What the off path costs against this variant, per round (the two runs of a round
        # are minutes apart, so the machine's load drifts less between them): events/s lost
        # and CPU per event added, medians over the rounds.
        pairs = list(zip(runs["off"], runs[v], strict=False))
        lost = statistics.median(1 - a["rate"] / b["rate"] for a, b in pairs)
        added = statistics.median(
            a["cpu_us_per_event"] / b["cpu_us_per_event"] - 1 for a, b in pairs
        )
        delta = "—" if v == "off" else f"{lost * 100:+.1f}%, {added * 100:+.1f}%"
        cells = f"{rate:,.0f} ({rates}) | {cpu:.2f} ({cpus}) | {gc_ms:.0f}"
        lines.append(f"| {v} | {cells} | {delta} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with (BENCH / "results" / "tracing.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
