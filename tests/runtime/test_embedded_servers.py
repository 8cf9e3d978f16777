"""The embedded servers start and answer; a busy port fails with a clear message."""

from __future__ import annotations

import socket

import psycopg
import pytest
import redis

from clickflow.config import Settings
from clickflow.kafka.topics import kafka_reachable
from clickflow.runtime.exceptions import PortBusyError
from clickflow.runtime.ports import require_free
from clickflow.stores.clickhouse import clickhouse_client


def test_redis_answers(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.set("clickflow:probe", "1")
    assert r.get("clickflow:probe") == b"1"


def test_postgres_answers(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


def test_kafka_answers(kafka_bootstrap: str) -> None:
    assert kafka_reachable(kafka_bootstrap)
    assert not kafka_reachable("127.0.0.1:1", timeout=0.5)


def test_clickhouse_answers(settings: Settings) -> None:
    client = clickhouse_client(settings)
    assert client.command("SELECT currentDatabase()") == settings.clickhouse_database


def test_busy_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"port {port}.*CLICKFLOW_API_PORT"):
            require_free("127.0.0.1", port, "the query API", "CLICKFLOW_API_PORT")
