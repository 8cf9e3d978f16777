"""ClickHouse cluster mode: the same schema files, rendered for a sharded, replicated cluster.

With ``CLICKFLOW_CLICKHOUSE_CLUSTER=<name>`` every ``CREATE TABLE`` of a domain's
``schema.sql`` becomes two tables, both ``ON CLUSTER``:

* ``<table>_local``: the ``Replicated*`` form of the table's engine (its Keeper path holds
  the shard and the table; ``{shard}`` and ``{replica}`` come from each server's macros).
  ``non_replicated_deduplication_window`` becomes ``replicated_deduplication_window``: the
  replicas share one deduplication log in Keeper, so a chunk's token is dropped whichever
  replica a replay reaches;
* ``<table>``: a ``Distributed`` table in front of it, under the table's own name, so every
  pipeline, query and API keeps using the names it uses on one server.

Materialized views are created on every server between the *local* tables: a block inserted
into a shard's raw table feeds that shard's rollups (and carries its deduplication token into
them, as on one server). Reads through the ``Distributed`` tables merge the shards.

The sharding key of every table is declared here (:data:`SHARDING_KEYS`); a table without
one is an error, so a new table cannot silently be sharded at random. Tables that pipelines
write chunk by chunk are sharded by the Kafka partition the rows came from where they carry
it: a chunk is one Kafka partition, so it lands whole on one shard with its token, exactly
as on a single server. Tables whose rows must meet their copies (``ReplacingMergeTree``
read with ``FINAL``) are sharded by the identity they are collapsed on.
"""

from __future__ import annotations

import re

from clickflow.stores.clickhouse import split_statements

#: Sharding key per table (an expression over the table's columns).
SHARDING_KEYS: dict[str, str] = {
    # exactly-once intent log: one consumer group's partition on one shard
    "consumer_intents": "cityHash64(group_id, topic, partition)",
    # page views: raw rows by Kafka partition (a chunk whole on one shard); rollups are fed
    # on each shard by the views, and reads merge the aggregate states of every shard
    "page_views_raw": "kafka_partition",
    "page_views_agg_minute": "cityHash64(page_id)",
    "page_views_agg_hour": "cityHash64(page_id)",
    "processing_errors": "kafka_partition",
    # UGC: copies of an event collapse by event_id within a user's rows
    "ugc_element_click": "cityHash64(user_id)",
    "ugc_quality_change": "cityHash64(user_id)",
    "ugc_video_complete": "cityHash64(user_id)",
    "ugc_search_filter": "cityHash64(user_id)",
    "ugc_page_view": "cityHash64(user_id)",
    "ugc_processing_errors": "partition",
    # ad clicks: raw by Kafka partition; minute corrections (backfill) by ad
    "ad_clicks_raw": "kafka_partition",
    "ad_clicks_minute": "cityHash64(ad_id)",
    "ad_clicks_watermarks": "kafka_partition",
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CREATE_TABLE = re.compile(
    rf"^CREATE TABLE IF NOT EXISTS (?P<name>{_IDENT})\s*(?P<body>\(.*)$", re.S | re.I
)
_ENGINE = re.compile(
    r"ENGINE\s*=\s*(?P<engine>(?:Replacing|Summing|Aggregating|Collapsing|"
    r"VersionedCollapsing)?MergeTree)\s*(?:\((?P<args>[^)]*)\))?",
    re.I,
)
_CREATE_VIEW = re.compile(
    rf"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<name>{_IDENT})\s+TO\s+(?P<target>{_IDENT})"
    rf"\s+AS\s+(?P<select>.*)$",
    re.S | re.I,
)
_FROM = re.compile(rf"\bFROM\s+(?P<table>{_IDENT})\b", re.I)
_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\b")


class ClusterSchemaError(ValueError):
    """A statement the cluster renderer does not know how to place on a cluster."""


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def local_name(table: str) -> str:
    return f"{table}_local"


def render_statement(statement: str, cluster: str, database: str) -> list[str]:
    """The cluster form of one single-server DDL statement (one or two statements)."""
    if not re.fullmatch(_IDENT, cluster) or not re.fullmatch(_IDENT, database):
        raise ClusterSchemaError(f"invalid cluster or database name: {cluster!r}, {database!r}")
    on = f"ON CLUSTER {cluster}"
    text = statement.strip()
    m = _CREATE_TABLE.match(text)
    if m:
        name, body = m["name"], m["body"]
        key = SHARDING_KEYS.get(name)
        if key is None:
            raise ClusterSchemaError(
                f"table {name} has no sharding key: declare one in SHARDING_KEYS"
            )
        engine = _ENGINE.search(body)
        if engine is None:
            raise ClusterSchemaError(f"table {name}: no MergeTree-family engine found")
        local = local_name(name)
        path = _quote(f"/clickhouse/tables/{{shard}}/{database}/{local}")
        args = [path, "'{replica}'"]
        if engine["args"] and engine["args"].strip():
            args.append(engine["args"].strip())
        replicated = f"ENGINE = Replicated{engine['engine']}({', '.join(args)})"
        body = body[: engine.start()] + replicated + body[engine.end() :]
        body = _WINDOW.sub("replicated_deduplication_window", body)
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {name} {on} AS {local} "
            f"ENGINE = Distributed({cluster}, {database}, {local}, {key})"
        )
        return [f"CREATE TABLE IF NOT EXISTS {local} {on}\n{body}", distributed]
    m = _CREATE_VIEW.match(text)
    if m:
        select = _FROM.sub(
            lambda f: (
                f"FROM {local_name(f['table'])}" if f["table"] in SHARDING_KEYS else f.group(0)
            ),
            m["select"],
        )
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {m['name']} {on} "
            f"TO {local_name(m['target'])} AS {select}"
        ]
    raise ClusterSchemaError(f"no cluster form for: {text[:80]}")


def render_schema(sql: str, cluster: str | None, database: str) -> list[str]:
    """The statements of a schema file for one server (``cluster`` None) or for a cluster."""
    statements = split_statements(sql)
    if not cluster:
        return statements
    out: list[str] = []
    for statement in statements:
        out.extend(render_statement(statement, cluster, database))
    return out
