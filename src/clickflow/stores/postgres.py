"""PostgreSQL access: psycopg 3 with a connection pool."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from clickflow.config import Settings


def postgres_url(settings: Settings) -> str:
    if not settings.postgres_url:
        raise RuntimeError(
            "CLICKFLOW_POSTGRES_URL is not set: start `clickflow up` (embedded PostgreSQL) "
            "or point it at a server"
        )
    return settings.postgres_url


def postgres_pool(settings: Settings, min_size: int = 1, max_size: int = 8) -> ConnectionPool:
    pool = ConnectionPool(
        postgres_url(settings),
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": False},
        open=True,
    )
    pool.wait(timeout=15)
    return pool


def ping(settings: Settings) -> str:
    import psycopg

    try:
        with psycopg.connect(postgres_url(settings), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return "ok"
    except Exception as e:
        return f"error: {type(e).__name__}: {str(e)[:200]}"
