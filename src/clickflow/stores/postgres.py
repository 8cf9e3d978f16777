"""PostgreSQL access: psycopg 3 with a connection pool."""

from __future__ import annotations

import threading

import psycopg
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


#: One connection per URL for :func:`ping`: a health probe every few seconds opened a new
#: one each time, i.e. a PostgreSQL backend forked, authenticated and torn down per probe.
_ping_conns: dict[str, psycopg.Connection] = {}
_ping_lock = threading.Lock()


def ping(settings: Settings) -> str:
    """Answers "ok" when PostgreSQL answers ``SELECT 1``. The connection is kept for the next
    ping; a kept one that fails (the server restarted, or closed it while idle) is replaced
    by a new one before the answer is an error."""
    try:
        url = postgres_url(settings)
    except RuntimeError as e:
        return f"error: {type(e).__name__}: {str(e)[:200]}"
    with _ping_lock:
        kept = _ping_conns.pop(url, None)
        if kept is not None:
            try:
                kept.execute("SELECT 1")
                _ping_conns[url] = kept
                return "ok"
            except Exception:
                kept.close()
        try:
            conn = psycopg.connect(url, connect_timeout=3, autocommit=True)
        except Exception as e:
            return f"error: {type(e).__name__}: {str(e)[:200]}"
        try:
            conn.execute("SELECT 1")
        except Exception as e:
            conn.close()
            return f"error: {type(e).__name__}: {str(e)[:200]}"
        _ping_conns[url] = conn
        return "ok"
