"""`clickflow adclicks ...`: recalculation from the raw store."""

from __future__ import annotations

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


@app.command()
def backfill(
    from_: Annotated[str, typer.Option("--from", help="start minute (ISO 8601 / epoch s)")],
    to: Annotated[str, typer.Option("--to", help="end minute, exclusive")],
    dry_run: Annotated[bool, typer.Option(help="only report the differences")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Rebuild the minute aggregates of [from, to) from the raw store; report differences."""
    from clickflow.config import get_settings
    from clickflow.domains.adclicks.reconcile import reconcile
    from clickflow.logs import setup_logging
    from clickflow.migrations import migrate_clickhouse
    from clickflow.stores.clickhouse import clickhouse_client

    start, end = _parse_time(from_), _parse_time(to)
    if start >= end:
        raise typer.BadParameter("--from must be before --to")
    settings = get_settings()
    setup_logging(settings.log_level)
    migrate_clickhouse(settings, ["adclicks"])
    result = reconcile(clickhouse_client(settings), start, end, apply=not dry_run)
    report = result.as_dict()
    if as_json:
        typer.echo(orjson.dumps(report).decode())
        return
    typer.echo(
        f"{report['from']} .. {report['to']}: {result.raw_clicks} clicks in the raw store "
        f"({result.raw_duplicates} duplicate rows ignored); "
        f"{len(result.differences)} minute buckets differ by {report['clicks_off']} clicks"
        + ("; corrected" if result.applied else "")
    )
    for d in result.differences[:50]:
        typer.echo(
            f"  {d.minute:%Y-%m-%d %H:%M} {d.ad_id} {d.country}/{d.device}/{d.os}: "
            f"aggregate {d.stored}, raw {d.truth}"
        )
