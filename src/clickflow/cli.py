"""The `clickflow` command."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from clickflow.config import get_settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.logs import setup_logging

app = typer.Typer(
    help="clickflow: real-time event analytics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def up(demo: Annotated[bool, typer.Option(help="also run the traffic generator")] = False) -> None:
    """Start everything: embedded Kafka, Redis, PostgreSQL, ClickHouse (chDB) and the services."""
    from clickflow.runtime.up import up as run_up

    settings = get_settings()
    setup_logging(settings.log_level)
    run_up(settings, demo)


@app.command()
def serve(
    pipelines: Annotated[bool, typer.Option(help="run the ClickHouse pipelines here")] = True,
) -> None:
    """Query API + dashboard (8000), SQL (8123), gRPC (9090) and the ClickHouse pipelines.

    chDB allows one process per data directory, so everything that uses the embedded
    ClickHouse runs here; against a ClickHouse server, run pipelines with `process` instead.
    """
    from clickflow.api.app import create_app
    from clickflow.grpc_services import start_domain_services
    from clickflow.migrations import migrate_clickhouse
    from clickflow.pipelines import all_pipelines, runner_checks, start_runners
    from clickflow.runtime.exceptions import RuntimeStartError
    from clickflow.runtime.http_server import run_app
    from clickflow.runtime.ports import require_free

    settings = get_settings()
    setup_logging(settings.log_level)
    # The endpoint is for the embedded store; a ClickHouse server answers HTTP itself.
    sql_endpoint = bool(settings.sql_port) and settings.clickhouse_url.startswith("chdb:")
    from clickflow.observability import tracing

    tracing.setup("serve")
    try:
        require_free(settings.host, settings.api_port, "the query API", "CLICKFLOW_API_PORT")
        if sql_endpoint:
            require_free(settings.host, settings.sql_port, "the SQL endpoint", "CLICKFLOW_SQL_PORT")
    except RuntimeStartError as e:
        raise SystemExit(f"clickflow: {e}") from None
    migrate_clickhouse(settings)
    if settings.postgres_url:
        from clickflow.migrations import migrate_postgres

        migrate_postgres(settings)
    runners = []
    if pipelines:
        specs = [s for s in all_pipelines().values() if s.store == "clickhouse"]
        # CLICKFLOW_CONSUMERS per pipeline: threads in one group, sharing the one chDB.
        runners = start_runners(settings, [(s, None) for s in specs], settings.consumers)
    sql_server = None
    if sql_endpoint:
        from clickflow.api.clickhouse_http import SqlEndpoint

        sql_server = SqlEndpoint(settings)
        sql_server.start()
    grpc_server = start_domain_services(settings)
    try:
        run_app(
            create_app(settings, checks=runner_checks(runners)),
            host=settings.host,
            port=settings.api_port,
            log_level="warning",
        )
    finally:
        for r in runners:
            r.stop()
        if grpc_server is not None:
            grpc_server.stop(grace=2)
        if sql_server is not None:
            sql_server.stop()


@app.command()
def collect() -> None:
    """The collector: HTTP ingest on port 8001."""
    from clickflow.collector.app import create_app
    from clickflow.runtime.http_server import run_app

    settings = get_settings()
    setup_logging(settings.log_level)
    from clickflow.observability import tracing

    tracing.setup("collector")
    run_app(
        create_app(settings),
        host=settings.host,
        port=settings.collector_port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def process(
    names: Annotated[list[str], typer.Argument(help="pipeline names (see `clickflow pipelines`)")],
    mode: Annotated[
        str | None, typer.Option(help="batch trigger: count, time or hybrid (default: pipeline's)")
    ] = None,
    records: Annotated[int | None, typer.Option(help="N: records per batch")] = None,
    seconds: Annotated[float | None, typer.Option(help="X: seconds per batch")] = None,
    delivery: Annotated[
        str | None, typer.Option(help="at-least-once or exactly-once (default: the pipeline's)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="consumer group id")] = None,
    consumers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="consumers per pipeline, one group (CLICKFLOW_CONSUMERS)"),
    ] = None,
) -> None:
    """Run pipelines in this process until SIGINT/SIGTERM (then finish the batch and commit).

    Serves /healthz, /metrics (and /debug/profile when enabled) on CLICKFLOW_PROCESS_PORT."""
    import threading

    # First of all: a stop requested while the process is still starting (imports and
    # migrations take seconds on a busy machine) ends it cleanly instead of killing it.
    stopping = threading.Event()

    def _stop(_sig: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    from clickflow.kafka.batch import BatchTrigger, Delivery
    from clickflow.migrations import migrate_clickhouse, migrate_postgres
    from clickflow.observability.process_http import start_process_http
    from clickflow.pipelines import PipelineOptions, all_pipelines, runner_checks, start_runners
    from clickflow.runtime.exceptions import RuntimeStartError

    settings = get_settings()
    setup_logging(settings.log_level)
    from clickflow.observability import tracing

    tracing.setup("process")
    specs = all_pipelines()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise typer.BadParameter(f"unknown pipeline(s) {unknown}; known: {sorted(specs)}")

    def options(name: str) -> PipelineOptions:
        default = specs[name].default_options
        try:
            chosen = Delivery(delivery) if delivery else default.delivery
            trigger = default.trigger
            if mode or records or seconds:
                default_mode = (
                    "hybrid"
                    if trigger.max_records and trigger.max_seconds
                    else "count"
                    if trigger.max_records
                    else "time"
                )
                trigger = BatchTrigger.from_mode(
                    mode or default_mode,
                    records or trigger.max_records or 5000,
                    seconds or trigger.max_seconds or 1.0,
                )
            return PipelineOptions(trigger, chosen, group or default.group)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None

    if any(specs[n].store == "clickhouse" for n in names):
        migrate_clickhouse(settings)
    if any(specs[n].store == "postgres" for n in names):
        migrate_postgres(settings)
    if stopping.is_set():
        return
    count = consumers or settings.consumers
    runners = start_runners(settings, [(specs[n], options(n)) for n in names], count)
    try:
        http = start_process_http(settings, names, runner_checks(runners))
    except RuntimeStartError as e:
        for r in runners:
            r.stop()
        raise SystemExit(f"clickflow: {e}") from None
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        http.stop(wait=False)  # winds down while the pipelines finish their batches
        for r in runners:
            r.stop()
        for r in runners:
            r.join()
        http.stop()


@app.command()
def pipelines() -> None:
    """List the pipelines."""
    from clickflow.pipelines import all_pipelines

    for spec in all_pipelines().values():
        topics = ",".join(t.name for t in spec.topics)
        typer.echo(f"{spec.name}\t{spec.store}\t{topics}")


@app.command()
def migrate() -> None:
    """Apply every domain's schema (ClickHouse, and PostgreSQL when configured)."""
    from clickflow.migrations import migrate_clickhouse, migrate_postgres

    settings = get_settings()
    setup_logging(settings.log_level)
    n = migrate_clickhouse(settings)
    typer.echo(f"clickhouse: {n} statements applied")
    if settings.postgres_url:
        typer.echo(f"postgres: {migrate_postgres(settings)} schema files applied")


@app.command()
def sql(query: Annotated[str, typer.Argument(help="a read-only ClickHouse query")]) -> None:
    """Run a ClickHouse query and print the rows as JSON lines (operators and tests).

    Beside a running `serve` (which holds the embedded store) the query goes through its SQL
    endpoint (CLICKFLOW_SQL_PORT); otherwise the store is opened here."""
    import orjson
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from clickflow.api.clickhouse_http import (
        chdb_directory,
        chdb_directory_held,
        endpoint_answers,
        endpoint_client,
    )
    from clickflow.stores.clickhouse import clickhouse_client

    settings = get_settings()
    client = None
    if settings.clickhouse_url.startswith("chdb:"):
        directory = chdb_directory(settings)
        held = chdb_directory_held(directory)
        if held or not directory.exists():
            if endpoint_answers(settings):
                client = endpoint_client(settings)
            elif held:
                raise SystemExit(
                    f"clickflow: another process (clickflow serve?) holds {directory}, and no "
                    f"SQL endpoint answers on {settings.host}:{settings.sql_port}: "
                    "set CLICKFLOW_SQL_PORT to serve's, or stop it"
                )
    try:
        result = (client or clickhouse_client(settings)).query(query)
    except ClickHouseError as e:  # the server's message is the useful part, not a traceback
        raise SystemExit(f"clickflow: {type(e).__name__}: {e}") from None
    for row in result.result_rows:
        typer.echo(
            orjson.dumps(dict(zip(result.column_names, row, strict=True)), default=str).decode()
        )


def _mount_optional() -> None:
    """Commands that live with their feature: generator, auth, Kafka tools, per-domain apps."""
    from importlib import import_module

    for module, attr in (
        ("clickflow.generator.cli", "register"),
        ("clickflow.collector.auth", "register"),
        ("clickflow.kafka.cli", "register"),
    ):
        try:
            mod = import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        getattr(mod, attr)(app)
    for domain in DOMAINS:
        mod = domain_module(domain, "cli")
        if mod is not None and hasattr(mod, "app"):
            app.add_typer(mod.app, name=domain)


_mount_optional()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
