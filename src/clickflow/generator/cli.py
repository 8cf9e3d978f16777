"""`clickflow generate`."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

console = Console(stderr=True)

DEMO_SCHEDULE = "regular:20,burst:10"


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    domain: Annotated[str, typer.Option(help="pageviews, ugc, adclicks or telecom")] = "pageviews",
    mode: Annotated[str, typer.Option(help="regular, burst, night or fixed")] = "regular",
    rate: Annotated[float, typer.Option(help="events/s for --mode fixed")] = 1000.0,
    schedule: Annotated[
        str | None, typer.Option(help='combine modes, e.g. "regular:60,burst:30,night:30"')
    ] = None,
    pattern: Annotated[str, typer.Option(help="sync, async or batch")] = "async",
    partitioner: Annotated[str, typer.Option(help="key, round-robin or random")] = "key",
    batch_size: Annotated[int, typer.Option(help="batch pattern: N events")] = 1000,
    batch_ms: Annotated[float, typer.Option(help="batch pattern: X ms")] = 50.0,
    broken_share: Annotated[float, typer.Option(help="share of broken events")] = 0.05,
    duplicate_share: Annotated[float, typer.Option(help="share of duplicates")] = 0.01,
    count: Annotated[int | None, typer.Option(help="stop after N events")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after S seconds")] = None,
    truth: Annotated[Path | None, typer.Option(help="write the ground truth here")] = None,
    control_port: Annotated[int | None, typer.Option(help="HTTP control port")] = None,
    no_control: Annotated[bool, typer.Option(help="do not serve the control API")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    workers: Annotated[
        int, typer.Option(help="generator processes per domain, each 1/N of the rate")
    ] = 1,
    demo: Annotated[bool, typer.Option(help="every domain, demo schedule")] = False,
    quiet: Annotated[bool, typer.Option(help="no live line")] = False,
) -> None:
    """Synthetic traffic for a domain: load modes, event mix, producer patterns, faults."""
    from clickflow.config import get_settings
    from clickflow.generator.engine import Engine
    from clickflow.generator.modes import RateModel, parse_schedule
    from clickflow.generator.options import GeneratorOptions, Mix
    from clickflow.generator.registry import available_domains, factory_for
    from clickflow.generator.workers import WorkerPool
    from clickflow.logs import setup_logging

    settings = get_settings()
    setup_logging(settings.log_level)
    try:
        mix = Mix(broken_share, duplicate_share)
        options = GeneratorOptions(
            pattern=pattern,
            partitioner=partitioner,
            batch_size=batch_size,
            batch_ms=batch_ms,
            seed=seed,
            # The demo sends a few dozen events a second per domain: with 5 ms of linger each
            # was a produce request of its own. 50 ms halves the broker's share of the demo
            # and adds at most 50 ms before a 1 s batch.
            producer_overrides={"linger.ms": 50} if demo else {},
        )
        steps = parse_schedule(schedule or DEMO_SCHEDULE) if (schedule or demo) else None
        factories = {}
        for d in available_domains() if demo else [domain]:
            try:
                factories[d] = factory_for(d)
            except ValueError as e:
                if not demo:
                    raise
                console.print(f"[yellow]demo: skipping {d}: {e}[/]")
        if not 1 <= workers <= 64:
            raise ValueError("--workers must be between 1 and 64")
        if count is not None and count < 0:
            raise ValueError("--count must be positive")
        engines: dict[str, Engine | WorkerPool] = {}
        for d, f in factories.items():
            args = (RateModel(mode=mode, rate=rate, seed=seed), mix, options)
            truth_path = truth if not demo else None
            if workers == 1:
                engines[d] = Engine(settings, f, d, *args, truth_path, steps)
            else:
                engines[d] = WorkerPool(settings, f, d, workers, *args, truth_path, steps)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    port = control_port or settings.generator_port
    if not no_control:
        _serve_control(engines, settings.host, port)

    def _stop(_sig: int, _frame: object) -> None:
        for e in engines.values():
            e.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    errors: dict[str, str] = {}

    def _run(d: str, e: Engine | WorkerPool) -> None:
        """An engine that fails stops the others and makes the command fail, loudly."""
        try:
            e.run(count=count, duration=duration)
        except Exception as exc:
            errors[d] = f"{type(exc).__name__}: {exc}"
            console.print(f"clickflow generate: {d} failed: {errors[d]}", style="red", markup=False)
            _stop(0, None)

    threads = [
        threading.Thread(target=_run, args=(d, e), name=f"gen-{d}", daemon=True)
        for d, e in engines.items()
    ]
    for t in threads:
        t.start()
    if quiet:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
    else:
        with Live(_line(engines), console=console, refresh_per_second=4) as live:
            while any(t.is_alive() for t in threads):
                time.sleep(0.25)
                live.update(_line(engines))
    failures = [f"{d}: {error}" for d, error in errors.items()]
    for d, e in engines.items():
        e.close()
        s = e.stats.as_dict()
        console.print(f"{d}: " + "  ".join(f"{k}={v}" for k, v in s.items()))
        if isinstance(e, WorkerPool) and e.failure:
            failures.append(f"{d}: {e.failure}")
    if failures:
        console.print("clickflow generate: " + "\n".join(failures), style="red", markup=False)
        raise typer.Exit(1)


def _line(engines: dict) -> str:
    """One live line per domain; a pool's counters are the sum of its workers'."""
    from clickflow.generator.workers import WorkerPool

    parts = []
    for d, e in engines.items():
        s = e.stats
        workers = f" ×{e.workers} workers" if isinstance(e, WorkerPool) else ""
        parts.append(
            f"[bold]{d}[/]{workers} {e.mode} sent={s.sent} acked={s.acked} failed={s.failed} "
            f"retried={s.retried} dup={s.duplicates} broken={s.broken} {s.rate():,.0f}/s"
        )
    return "\n".join(parts)


def _serve_control(engines: dict, host: str, port: int) -> None:
    import uvicorn

    from clickflow.generator.control import create_control_app
    from clickflow.runtime.exceptions import RuntimeStartError
    from clickflow.runtime.http_server import QuietServer
    from clickflow.runtime.ports import require_free

    try:
        require_free(host, port, "the generator control API", "CLICKFLOW_GENERATOR_PORT")
    except RuntimeStartError as e:
        raise SystemExit(f"clickflow: {e}") from None
    server = QuietServer(
        uvicorn.Config(create_control_app(engines), host=host, port=port, log_level="warning")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    threading.Thread(target=server.run, name="generator-control", daemon=True).start()
