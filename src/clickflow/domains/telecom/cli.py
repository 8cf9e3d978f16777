"""`clickflow telecom ...`: the generator's verify mode and the retention job."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Annotated

import typer

app = typer.Typer(help="Telecom usage: verify mode, retention.", no_args_is_help=True)


@app.command()
def verify(
    events: Annotated[int, typer.Option(help="records to send (duplicates included)")] = 10_000,
    duplicates: Annotated[float, typer.Option(help="share of resent duplicates")] = 0.1,
    rate: Annotated[float, typer.Option(help="events/s; 0 = as fast as possible")] = 0.0,
    users: Annotated[int, typer.Option(help="user population")] = 1000,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the database")] = 60.0,
    ingest: Annotated[
        bool, typer.Option(help="also run the telecom-ingest pipeline in this process")
    ] = False,
) -> None:
    """Send N events with duplicates, then check every unique one reached events_raw once."""
    from clickflow.config import get_settings
    from clickflow.domains.telecom.verify import run_verify
    from clickflow.logs import setup_logging
    from clickflow.migrations import migrate_postgres

    settings = get_settings()
    setup_logging(settings.log_level)
    migrate_postgres(settings, ["telecom"])
    consumer = None
    if ingest:
        from clickflow.pipelines import all_pipelines, build_consumer

        consumer = build_consumer(settings, all_pipelines()["telecom-ingest"])
        threading.Thread(target=consumer.run, name="telecom-ingest", daemon=True).start()
    try:
        report = run_verify(
            settings,
            events=events,
            duplicate_share=duplicates,
            rate=rate,
            users=users,
            timeout=timeout,
            progress=lambda s: typer.echo(s, err=True),
        )
    finally:
        if consumer is not None:
            consumer.stop()
    for line in report.lines():
        typer.echo(line)
    if report.failed or report.duplicate_rows:
        raise typer.Exit(1)


@app.command()
def retention(
    months: Annotated[int, typer.Option(help="keep this many months before the current one")],
    dry_run: Annotated[bool, typer.Option(help="only list what would be dropped")] = False,
) -> None:
    """Drop the events_raw month partitions older than N months (and those events' keys)."""
    import psycopg

    from clickflow.config import get_settings
    from clickflow.domains.telecom.store import add_months, month_of
    from clickflow.stores.postgres import postgres_url

    if months < 0:
        raise typer.BadParameter("months must be >= 0")
    keep_from = add_months(month_of(datetime.now(UTC)), -months)
    settings = get_settings()
    with psycopg.connect(postgres_url(settings), autocommit=True) as conn:
        if dry_run:
            rows = conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent "
                "JOIN pg_namespace n ON n.oid = p.relnamespace "
                "WHERE n.nspname = 'telecom' AND p.relname = 'events_raw' "
                "ORDER BY 1"
            ).fetchall()
            names = [r[0] for r in rows if r[0][-8:] < keep_from.strftime("y%Ym%m")]
        else:
            rows = conn.execute("SELECT telecom.drop_partitions_before(%s)", [keep_from]).fetchall()
            names = [r[0] for r in rows]
    verb = "would drop" if dry_run else "dropped"
    typer.echo(f"keeping months from {keep_from.isoformat()}; {verb} {len(names)} partitions")
    for name in names:
        typer.echo(f"  {name}")
