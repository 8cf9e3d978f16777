"""The migration runner: applies each domain's idempotent SQL files at start-up."""

from __future__ import annotations

import logging

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_sql
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.migrations")


def migrate_clickhouse(
    settings: Settings, domains: list[str] | None = None, database: str | None = None
) -> int:
    from clickflow.exactly_once.intent_log import INTENTS_SQL
    from clickflow.stores.clickhouse import clickhouse_client
    from clickflow.stores.clickhouse_cluster import render_schema

    client = clickhouse_client(settings, database)
    db = database or settings.clickhouse_database
    cluster = settings.clickhouse_cluster
    for statement in render_schema(INTENTS_SQL, cluster, db):
        client.command(statement)
    total = 0
    for domain in domains or DOMAINS:
        sql = domain_sql(domain, "schema.sql")
        if sql:
            statements = render_schema(sql, cluster, db)
            for statement in statements:
                client.command(statement)
            total += len(statements)
            log.info(
                "clickhouse schema applied",
                extra=log_fields(domain=domain, statements=len(statements), cluster=cluster),
            )
    return total


def migrate_postgres(settings: Settings, domains: list[str] | None = None) -> int:
    from clickflow.stores import postgres

    applied = 0
    for domain in domains or DOMAINS:
        sql = domain_sql(domain, "schema_postgres.sql")
        if sql:
            import psycopg

            with psycopg.connect(postgres.postgres_url(settings), autocommit=True) as conn:
                conn.execute(sql)  # type: ignore[arg-type]  # trusted file from the package
            applied += 1
            log.info("postgres schema applied", extra=log_fields(domain=domain))
    return applied
