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
from clickhouse_connect.driver.client import Client

from clickflow.config import Settings
from clickflow.exactly_once.chdb_dedup import forget_uncommitted_blocks
from clickflow.logs import log_fields

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
    cluster = settings.clickhouse_cluster
    if cluster is not None and not _IDENTIFIER.fullmatch(cluster):
        raise ValueError(f"invalid ClickHouse cluster name {cluster!r}")
    key = (settings.clickhouse_url, db, threading.get_ident())
    client = _clients.get(key)
    if client is not None:  # no lock: a new client takes seconds to connect (chDB)
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
            _connect(settings.clickhouse_url, "default", cluster).command(
                f"CREATE DATABASE IF NOT EXISTS `{db}`{on_cluster}"  # noqa: S608 - validated identifiers
            )
            client = _connect(settings.clickhouse_url, db, cluster)
            _clients[key] = client
        return client


def _connect(dsn: str, database: str, cluster: str | None = None) -> Client:
    if dsn.startswith("chdb://"):
        _repair_once(Path(dsn.removeprefix("chdb://")))
    kwargs: dict[str, Any] = {"dsn": dsn, "database": database}
    if not dsn.startswith("chdb:"):
        kwargs["autogenerate_session_id"] = False
        kwargs["connect_timeout"] = 5
        kwargs["send_receive_timeout"] = 60
        if cluster:
            # An insert into a Distributed table returns only once every shard stored its
            # part (with the chunk's deduplication token): the acknowledgement the
            # exactly-once commit waits for. DDL waits for every server of the cluster.
            kwargs["settings"] = {
                "distributed_foreground_insert": 1,
                "distributed_ddl_task_timeout": 300,
            }
    return clickhouse_connect.get_client(**kwargs)


def _repair_once(data_dir: Path) -> None:
    """Before this process first opens an embedded data directory: forget the dedup
    records of blocks a crash left uncommitted (see :mod:`clickflow.exactly_once.chdb_dedup`).

    The repair reads and appends chDB's own files, so it belongs to opening the engine: it
    runs here, in the one ClickHouse entry point, whichever module opens the directory first."""
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


def ping(settings: Settings) -> str:
    try:
        clickhouse_client(settings).command("SELECT 1")
        return "ok"
    except Exception as e:  # health report, not control flow
        return f"error: {type(e).__name__}: {str(e)[:200]}"
