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


def test_postgres_ping_keeps_its_connection(
    base_settings: Settings, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A health probe every few seconds must not fork a PostgreSQL backend each time: the
    ping keeps one connection, and replaces it when the server dropped it."""
    from clickflow.stores import postgres

    settings = base_settings.model_copy(update={"postgres_url": postgres_url})
    opened: list[psycopg.Connection] = []
    connect = psycopg.connect

    def counting_connect(*args: object, **kwargs: object) -> psycopg.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    monkeypatch.setattr(psycopg, "connect", counting_connect)
    monkeypatch.setattr(postgres, "_ping_conns", {})
    assert [postgres.ping(settings) for _ in range(3)] == ["ok"] * 3
    assert len(opened) == 1

    with connect(postgres_url, autocommit=True) as admin:
        pid = opened[0].info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    assert postgres.ping(settings) == "ok"
    assert len(opened) == 2
    assert postgres.ping(settings) == "ok"
    assert len(opened) == 2
    opened[-1].close()


def test_kafka_probe_reuses_its_client(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve`'s /healthz asks Kafka every probe: through one admin client, not a new one
    (threads, connection, version handshake) each time. A failed probe keeps nothing."""
    from clickflow.kafka import topics

    built: list[object] = []

    class CountingAdmin(topics.AdminClient):  # type: ignore[misc, name-defined]
        def __init__(self, conf: dict) -> None:
            super().__init__(conf)
            built.append(self)

    monkeypatch.setattr(topics, "AdminClient", CountingAdmin)
    monkeypatch.setattr(topics, "_reachable_clients", {})
    assert all(kafka_reachable(kafka_bootstrap) for _ in range(3))
    assert len(built) == 1
    assert not kafka_reachable("127.0.0.1:1", timeout=0.5)
    assert not kafka_reachable("127.0.0.1:1", timeout=0.5)
    assert list(topics._reachable_clients) == [kafka_bootstrap]
