"""In-process apps for fuzzing: the collector and the query API on the session's real
broker, chDB, Redis and PostgreSQL (telecom schema in a database of its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from clickflow.api.app import create_app as create_api
from clickflow.collector.app import create_app as create_collector
from clickflow.collector.config import CollectorConfig
from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.migrations import migrate_clickhouse, migrate_postgres
from tests.domains.telecom.support import with_database

JWT_SECRET = "fuzz-tests-jwt-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def fuzz_topic(base_settings: Settings) -> str:
    topic = f"fuzz-{uuid.uuid4().hex[:10]}"
    ensure_topics(base_settings.kafka_bootstrap, [TopicSpec(topic, 4)])
    return topic


@pytest.fixture(scope="module")
def collector_settings(base_settings: Settings, redis_url: str) -> Settings:
    return base_settings.model_copy(update={"redis_url": redis_url, "jwt_secret": JWT_SECRET})


@pytest.fixture(scope="module")
def collector_app(collector_settings: Settings, fuzz_topic: str) -> FastAPI:
    opts = CollectorConfig(topic=fuzz_topic, rate_per_second=0, max_body_bytes=65_536)
    return create_collector(collector_settings, opts)


@pytest.fixture(scope="module")
def collector(collector_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(collector_app) as client:
        yield client


@pytest.fixture(scope="module")
def api_settings(base_settings: Settings, redis_url: str, postgres_url: str) -> Settings:
    """A fresh ClickHouse database and a fresh PostgreSQL database, both migrated."""
    db = f"fz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s = base_settings.model_copy(
        update={
            "clickhouse_database": db,
            "redis_url": redis_url,
            "postgres_url": with_database(postgres_url, db),
        }
    )
    migrate_clickhouse(s)
    migrate_postgres(s, ["telecom"])
    return s


@pytest.fixture(scope="module")
def api_app(api_settings: Settings) -> FastAPI:
    return create_api(api_settings)


@pytest.fixture(scope="module")
def api(api_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(api_app, raise_server_exceptions=False) as client:
        yield client
