"""Telecom fixtures: a fresh PostgreSQL database per test (schema applied)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from clickflow.config import Settings
from clickflow.migrations import migrate_postgres

from .support import pg, with_database


@pytest.fixture
def tc_settings(settings_full: Settings) -> Iterator[Settings]:
    """settings_full pointed at a new database with the telecom schema."""
    assert settings_full.postgres_url
    db = f"tc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings_full.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s = settings_full.model_copy(
        update={"postgres_url": with_database(settings_full.postgres_url, db)}
    )
    migrate_postgres(s, ["telecom"])
    yield s
    from clickflow.domains.telecom import queries

    for key in [k for k in queries._services if k[0] == s.postgres_url]:
        queries._services.pop(key).close()
    # DROP SCHEMA, not DROP DATABASE: dropping a database forces a checkpoint, and a
    # checkpoint of the session's server fails (PANIC) while a concurrent pytest session has
    # chmod'ed /tmp/pytest-of-<user> back to 0700 (the server runs as another OS user).
    with pg(s) as conn:
        conn.execute("DROP SCHEMA telecom CASCADE")
