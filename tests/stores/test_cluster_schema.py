"""Cluster mode DDL: every statement of both modes is rendered and parsed by the real engine.

No ClickHouse cluster runs here, so the cluster statements are checked three ways: chDB's
parser accepts each one (``formatQuery``), their shape is what the design says (Replicated
engines, Distributed tables under the old names, views between local tables), and every
sharding key is a valid expression over its table's columns (evaluated against the
single-server table in chDB)."""

from __future__ import annotations

import re

import pytest

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_sql
from clickflow.exactly_once.intent_log import INTENTS_SQL
from clickflow.stores.clickhouse import clickhouse_client, split_statements
from clickflow.stores.clickhouse_cluster import (
    SHARDING_KEYS,
    ClusterSchemaError,
    local_name,
    render_schema,
    render_statement,
)

SCHEMAS = {"intents": INTENTS_SQL} | {
    d: sql for d in DOMAINS if (sql := domain_sql(d, "schema.sql")) is not None
}
CLUSTER, DB = "clickflow_cluster", "clickflow"


def _parses(settings: Settings, statement: str) -> str:
    return clickhouse_client(settings).command(
        "SELECT formatQuery({q:String})", parameters={"q": statement}
    )


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_statement_of_both_modes_parses(settings: Settings, name: str) -> None:
    for cluster in (None, CLUSTER):
        statements = render_schema(SCHEMAS[name], cluster, DB)
        assert statements
        for statement in statements:
            formatted = _parses(settings, statement)
            assert isinstance(formatted, str) and formatted.startswith("CREATE")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_cluster_tables_are_replicated_and_distributed(name: str) -> None:
    single = split_statements(SCHEMAS[name])
    rendered = render_schema(SCHEMAS[name], CLUSTER, DB)
    tables = [m[1] for s in single if (m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s))]
    views = [s for s in single if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(rendered) == 2 * len(tables) + len(views)
    for statement in rendered:
        assert f"ON CLUSTER {CLUSTER}" in statement
        assert "non_replicated_deduplication_window" not in statement
    for table in tables:
        local = next(
            s for s in rendered if s.startswith(f"CREATE TABLE IF NOT EXISTS {table}_local")
        )
        assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/", local)
        assert "'{replica}'" in local
        front = next(s for s in rendered if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} "))
        assert front.endswith(
            f"ENGINE = Distributed({CLUSTER}, {DB}, {local_name(table)}, {SHARDING_KEYS[table]})"
        )
    for statement in rendered:
        if statement.startswith("CREATE MATERIALIZED VIEW"):
            target = re.search(r" TO (\w+) AS ", statement)[1]
            sources = re.findall(r"\bFROM\s+(\w+)", statement)
            assert target.endswith("_local")
            assert sources and all(s.endswith("_local") for s in sources)


def test_engine_arguments_are_kept() -> None:
    [local, _front] = render_statement(
        "CREATE TABLE IF NOT EXISTS ad_clicks_minute (minute DateTime, ad_id String, "
        "clicks Int64) ENGINE = SummingMergeTree(clicks) ORDER BY (minute, ad_id) "
        "SETTINGS non_replicated_deduplication_window = 1000",
        CLUSTER,
        DB,
    )
    assert (
        "ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/clickflow/"
        "ad_clicks_minute_local', '{replica}', clicks)" in local
    )
    assert "replicated_deduplication_window = 1000" in local


def test_a_table_without_a_sharding_key_is_refused() -> None:
    with pytest.raises(ClusterSchemaError, match="sharding key"):
        render_statement(
            "CREATE TABLE IF NOT EXISTS unknown_table (a Int32) ENGINE = MergeTree ORDER BY a",
            CLUSTER,
            DB,
        )
    with pytest.raises(ClusterSchemaError):
        render_statement("DROP TABLE page_views_raw", CLUSTER, DB)
    with pytest.raises(ClusterSchemaError):
        render_statement("CREATE TABLE IF NOT EXISTS x (a Int32) ENGINE = Memory", "c; x", DB)


def test_every_sharding_key_is_an_expression_over_its_table(settings: Settings) -> None:
    """Create the single-server tables, then evaluate each key against them."""
    client = clickhouse_client(settings)
    created: set[str] = set()
    for sql in SCHEMAS.values():
        for statement in split_statements(sql):
            client.command(statement)
            m = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
            if m:
                created.add(m[1])
    assert created <= SHARDING_KEYS.keys(), "every table needs a sharding key"
    for table in created:
        client.query(f"SELECT {SHARDING_KEYS[table]} FROM {table} LIMIT 0")  # noqa: S608 - names from the code


def test_the_cluster_client_settings_exist(settings: Settings) -> None:
    client = clickhouse_client(settings)
    for name in ("distributed_foreground_insert", "distributed_ddl_task_timeout"):
        assert client.command(
            "SELECT count() FROM system.settings WHERE name = {n:String}", parameters={"n": name}
        )
