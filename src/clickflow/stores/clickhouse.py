"""The one ClickHouse access module.

``clickhouse_connect.get_client`` hides the transport: ``chdb:///path`` runs the ClickHouse
engine in this process, ``http://host:8123`` talks to a server. Same client, same SQL.
chDB allows one process per data directory, so every pipeline and the query API that use
the embedded ClickHouse live in one process (`clickflow serve`).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client

from clickflow.config import Settings
from clickflow.kafka.consumer import Chunk
from clickflow.logs import log_fields
from clickflow.stores.chdb_dedup import forget_uncommitted_blocks

# Settings of every pipeline insert (one batch chunk, with a deduplication token):
# * the rollup blocks a replayed insert produces are dropped too (each schema.sql explains);
# * no parallel parsing: a chunk is a few MB at most, and splitting it across a segmenter
#   and parser threads cost ~1 us per row more CPU than parsing it in the query thread.
PIPELINE_INSERT_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "input_format_parallel_parsing": 0,
}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_lock = threading.Lock()
_clients: dict[tuple[str, str, int], Client] = {}
_repaired: set[Path] = set()
log = logging.getLogger("clickflow.clickhouse")


def clickhouse_client(settings: Settings, database: str | None = None) -> Client:
    """A client for ``database`` (created if missing), one per thread.

    clickhouse-connect clients are not safe for concurrent queries from several threads,
    so each thread gets its own.
    """
    db = database or settings.clickhouse_database
    if not _IDENTIFIER.fullmatch(db):
        raise ValueError(f"invalid ClickHouse database name {db!r}")
    key = (settings.clickhouse_url, db, threading.get_ident())
    with _lock:
        client = _clients.get(key)
        if client is None:
            _connect(settings.clickhouse_url, "default").command(
                f"CREATE DATABASE IF NOT EXISTS `{db}`"  # noqa: S608 - validated identifier
            )
            client = _connect(settings.clickhouse_url, db)
            _clients[key] = client
        return client


def _connect(dsn: str, database: str) -> Client:
    if dsn.startswith("chdb://"):
        _repair_once(Path(dsn.removeprefix("chdb://")))
    kwargs: dict[str, Any] = {"dsn": dsn, "database": database}
    if not dsn.startswith("chdb:"):
        kwargs["autogenerate_session_id"] = False
        kwargs["connect_timeout"] = 5
        kwargs["send_receive_timeout"] = 60
    return clickhouse_connect.get_client(**kwargs)


def _repair_once(data_dir: Path) -> None:
    """Before this process first opens an embedded data directory: forget the dedup
    records of blocks a crash left uncommitted (see ``chdb_dedup``)."""
    if data_dir in _repaired:
        return
    _repaired.add(data_dir)
    if not data_dir.is_dir():
        return
    for block in forget_uncommitted_blocks(data_dir):
        log.warning(
            "forgot the deduplication record of a block a crash left uncommitted",
            extra=log_fields(table_dir=str(block.table_dir), part=block.part),
        )


def split_statements(sql: str) -> list[str]:
    """Split a schema file on ``;`` at line ends; ``--`` comment lines are dropped."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    parts = "\n".join(lines).split(";\n")
    return [p.strip().rstrip(";").strip() for p in parts if p.strip().rstrip(";").strip()]


def apply_schema(client: Client, sql: str) -> int:
    statements = split_statements(sql)
    for statement in statements:
        client.command(statement)
    return len(statements)


def ping(settings: Settings) -> str:
    try:
        clickhouse_client(settings).command("SELECT 1")
        return "ok"
    except Exception as e:  # health report, not control flow
        return f"error: {type(e).__name__}: {str(e)[:200]}"


INTENTS_SQL = """
CREATE TABLE IF NOT EXISTS consumer_intents
(
    group_id String,
    topic String,
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    created DateTime DEFAULT now()
) ENGINE = MergeTree
ORDER BY (group_id, topic, partition, first_offset)
TTL created + INTERVAL 7 DAY
"""


class ClickHouseIntentLog:
    """Exactly-once intent log kept in the same ClickHouse as the data it protects."""

    def __init__(self, settings: Settings, database: str | None = None) -> None:
        self._settings = settings
        self._database = database
        clickhouse_client(settings, database).command(INTENTS_SQL)

    def record(self, group: str, chunks: list[Chunk]) -> None:
        # A raw JSON insert: half the time of client.insert (no Native block built in Python).
        rows = b"\n".join(
            orjson.dumps([group, c.topic, c.partition, c.first_offset, c.last_offset])
            for c in chunks
        )
        clickhouse_client(self._settings, self._database).raw_insert(
            "consumer_intents",
            ["group_id", "topic", "partition", "first_offset", "last_offset"],
            rows,
            fmt="JSONCompactEachRow",
        )

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[tuple[int, int]]:
        result = clickhouse_client(self._settings, self._database).query(
            "SELECT DISTINCT first_offset, last_offset FROM consumer_intents "
            "WHERE group_id = {g:String} AND topic = {t:String} AND partition = {p:Int32} "
            "AND last_offset >= {o:Int64} ORDER BY first_offset",
            parameters={"g": group, "t": topic, "p": partition, "o": from_offset},
        )
        ranges = [(int(a), int(b)) for a, b in result.result_rows]
        # Keep a non-overlapping chain: after a replay the same range may be recorded twice.
        chain: list[tuple[int, int]] = []
        for first, last in ranges:
            if not chain or first > chain[-1][1]:
                chain.append((first, last))
        return chain
