"""`clickflow adclicks ...`: recalculation from the raw store."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Ad-click aggregation: backfill / reconciliation.", no_args_is_help=True)


def _parse_time(value: str) -> datetime:
    try:
        t = datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r}: use ISO 8601 or epoch seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _parse_duration(value: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use e.g. 90s, 15m, 1h, 2d") from None
    if seconds <= 0:
        raise typer.BadParameter(f"{value!r} must be positive")
    return seconds


@app.command()
def backfill(
    from_: Annotated[
        str | None, typer.Option("--from", help="start minute (ISO 8601 / epoch s)")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="end minute, exclusive")] = None,
    every: Annotated[
        str | None,
        typer.Option(help="run on a schedule (e.g. 1h), over the last --lookback each time"),
    ] = None,
    lookback: Annotated[
        str | None,
        typer.Option(help="with --every: how far back each run looks (default 6h)"),
    ] = None,
    group: Annotated[
        str,
        typer.Option(help="the pipeline's consumer group (its committed offsets bound the diff)"),
    ] = "clickflow-adclicks",
    metrics_port: Annotated[
        int | None, typer.Option(help="with --every: serve Prometheus metrics on this port")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="only report the differences")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Rebuild the minute aggregates of [from, to) from the raw store; report differences.

    Safe beside a running pipeline: the diff is bounded by the group's committed offsets.
    With --every, runs forever and exposes the differences it found as metrics."""
    from clickflow.config import get_settings
    from clickflow.domains.adclicks.config import AdClicksConfig
    from clickflow.domains.adclicks.reconcile import (
        committed_offsets,
        observe,
        reconcile,
        scheduled_run,
    )
    from clickflow.logs import setup_logging
    from clickflow.migrations import migrate_clickhouse
    from clickflow.stores.clickhouse import clickhouse_client

    settings = get_settings()
    cfg = AdClicksConfig()
    if every is not None:
        period = _parse_duration(every)
        window = _parse_duration(lookback) if lookback else cfg.backfill_lookback_s
        setup_logging(settings.log_level)
        migrate_clickhouse(settings, ["adclicks"])
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr=settings.host)
        while True:
            started = time.monotonic()
            try:
                _print(scheduled_run(settings, cfg, group, window, not dry_run), as_json)
            except Exception as e:  # a store outage: report it and try at the next tick
                typer.echo(f"backfill failed: {type(e).__name__}: {str(e)[:300]}", err=True)
            time.sleep(max(1.0, period - (time.monotonic() - started)))
    if from_ is None or to is None:
        raise typer.BadParameter("give --from and --to, or --every")
    start, end = _parse_time(from_), _parse_time(to)
    if start >= end:
        raise typer.BadParameter("--from must be before --to")
    setup_logging(settings.log_level)
    migrate_clickhouse(settings, ["adclicks"])
    result = reconcile(
        clickhouse_client(settings),
        start,
        end,
        apply=not dry_run,
        committed=lambda: committed_offsets(settings, group, cfg.topic, cfg.partitions),
    )
    observe(result)
    _print(result, as_json)


def _print(result, as_json: bool) -> None:
    report = result.as_dict()
    if as_json:
        typer.echo(orjson.dumps(report).decode())
        return
    typer.echo(
        f"{report['from']} .. {report['to']}: {result.raw_clicks} clicks in the raw store "
        f"({result.raw_duplicates} duplicate rows ignored); "
        f"{len(result.differences)} minute buckets differ by {report['clicks_off']} clicks"
        f"; {result.unstable} still being written (next run)"
        + ("; corrected" if result.applied else "")
    )
    for d in result.differences[:50]:
        typer.echo(
            f"  {d.minute:%Y-%m-%d %H:%M} {d.ad_id} {d.country}/{d.device}/{d.os}: "
            f"aggregate {d.stored}, raw {d.truth}"
        )
