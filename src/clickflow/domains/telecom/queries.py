"""The one query module behind both the HTTP routes and the gRPC service.

Answers are plain dicts (JSON-ready: timestamps as RFC 3339 strings, integers as ints), so
HTTP returns them as they are and gRPC copies them field by field into its messages: the
two protocols cannot disagree. SQL is parameterised only.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
import redis
from prometheus_client import Counter, Histogram
from psycopg_pool import ConnectionPool

from clickflow.config import Settings
from clickflow.domains.telecom.cache import AggCache
from clickflow.domains.telecom.config import TelecomConfig, telecom_config
from clickflow.domains.telecom.events import EventType
from clickflow.domains.telecom.ratelimit import RateLimiter
from clickflow.stores.postgres import postgres_pool, postgres_url

CACHE = Counter(
    "clickflow_telecom_cache_requests", "Aggregate requests by cache result", ["result"]
)
QUERY_SECONDS = Histogram(
    "clickflow_telecom_query_seconds",
    "Telecom query time (cache included)",
    ["query"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class QueryError(ValueError):
    """A request that cannot be answered as asked (bad cursor, bad period...)."""


class Granularity(StrEnum):
    DAY = "day"
    MONTH = "month"


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _int(v: int | Decimal | None) -> int:
    return int(v) if v is not None else 0


# -- user detail -----------------------------------------------------------------------------


def encode_cursor(started_at: datetime, source_id: str, event_id: str) -> str:
    raw = orjson.dumps([iso(started_at), source_id, event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, source_id, event_id = orjson.loads(raw)
        return datetime.fromisoformat(ts), str(source_id), str(event_id)
    except (binascii.Error, ValueError, TypeError) as e:
        raise QueryError("cursor is not one this API returned") from e


@dataclass(frozen=True)
class DetailRequest:
    user_id: str
    start: datetime  # inclusive
    end: datetime  # exclusive
    limit: int = 100
    cursor: str | None = None


DETAIL_SQL = """
SELECT source_id, event_id, type, started_at, ended_at, duration_sec, bytes_up, bytes_down,
       meta
FROM telecom.events_raw
WHERE user_id = %(user)s AND started_at >= %(start)s AND started_at < %(end)s
  AND (%(c_ts)s::timestamptz IS NULL
       OR (started_at, source_id, event_id) < (%(c_ts)s, %(c_src)s, %(c_id)s))
ORDER BY started_at DESC, source_id DESC, event_id DESC
LIMIT %(limit)s
"""

DETAIL_TOTALS_SQL = """
SELECT type, count(*), sum(duration_sec), sum(bytes_up), sum(bytes_down)
FROM telecom.events_raw
WHERE user_id = %(user)s AND started_at >= %(start)s AND started_at < %(end)s
GROUP BY type ORDER BY type
"""


def _totals(rows: list[tuple]) -> list[dict[str, Any]]:
    return [
        {
            "type": r[0],
            "events": _int(r[1]),
            "duration_sec": _int(r[2]),
            "bytes_up": _int(r[3]),
            "bytes_down": _int(r[4]),
        }
        for r in rows
    ]


def user_detail(pool: ConnectionPool, req: DetailRequest) -> dict[str, Any]:
    """A user's events in [start, end), newest first, one page; totals per type for the
    whole period on the first page."""
    if req.end <= req.start:
        raise QueryError("'to' must be after 'from'")
    c_ts = c_src = c_id = None
    if req.cursor:
        c_ts, c_src, c_id = decode_cursor(req.cursor)
    params = {
        "user": req.user_id,
        "start": req.start,
        "end": req.end,
        "c_ts": c_ts,
        "c_src": c_src,
        "c_id": c_id,
        "limit": req.limit + 1,
    }
    with pool.connection() as conn:
        rows = conn.execute(DETAIL_SQL, params).fetchall()
        totals = None if req.cursor else conn.execute(DETAIL_TOTALS_SQL, params).fetchall()
    more = len(rows) > req.limit
    rows = rows[: req.limit]
    events = [
        {
            "source_id": r[0],
            "event_id": r[1],
            "type": r[2],
            "started_at": iso(r[3]),
            "ended_at": iso(r[4]),
            "duration_sec": r[5],
            "bytes_up": r[6],
            "bytes_down": r[7],
            "meta": r[8],
        }
        for r in rows
    ]
    last = rows[-1] if rows else None
    return {
        "user_id": req.user_id,
        "from": iso(req.start),
        "to": iso(req.end),
        "events": events,
        "totals": _totals(totals) if totals is not None else None,
        "next_cursor": encode_cursor(last[3], last[0], last[1]) if more and last else None,
    }


# -- global aggregates -----------------------------------------------------------------------


@dataclass(frozen=True)
class AggRequest:
    granularity: Granularity
    start: date  # inclusive
    end: date  # inclusive
    type: EventType | None = None

    def cache_key(self) -> str:
        t = self.type.value if self.type else "*"
        return f"{self.granularity.value}:{self.start.isoformat()}:{self.end.isoformat()}:{t}"


# The table and column names come from this fixed mapping, never from the request.
_AGG_SOURCES = {
    Granularity.DAY: ("telecom.agg_global_day", "day"),
    Granularity.MONTH: ("telecom.agg_global_month", "month"),
}
_AGG_SQL = {
    g: f"""
SELECT {col}, type, events, duration_sec, bytes_up, bytes_down
FROM {table}
WHERE {col} >= %(start)s AND {col} <= %(end)s
  AND (%(type)s::text IS NULL OR type = %(type)s)
ORDER BY {col}, type
"""  # noqa: S608  # identifiers from _AGG_SOURCES, values are parameters
    for g, (table, col) in _AGG_SOURCES.items()
}


def global_aggregates_sql(pool: ConnectionPool, req: AggRequest) -> dict[str, Any]:
    """Global aggregates by day or month (months: a range of month starts), per type."""
    if req.end < req.start:
        raise QueryError("'to' must not be before 'from'")
    start = req.start
    if req.granularity is Granularity.MONTH:
        start = start.replace(day=1)
    params = {"start": start, "end": req.end, "type": req.type.value if req.type else None}
    with pool.connection() as conn:
        rows = conn.execute(_AGG_SQL[req.granularity], params).fetchall()  # type: ignore[arg-type]
    return {
        "granularity": req.granularity.value,
        "from": req.start.isoformat(),
        "to": req.end.isoformat(),
        "type": req.type.value if req.type else None,
        "rows": [
            {
                "period": r[0].isoformat(),
                "type": r[1],
                "events": _int(r[2]),
                "duration_sec": _int(r[3]),
                "bytes_up": _int(r[4]),
                "bytes_down": _int(r[5]),
            }
            for r in rows
        ],
    }


# -- the service both protocols use ----------------------------------------------------------


class TelecomQueries:
    """PostgreSQL pool + Redis cache for one deployment (settings)."""

    def __init__(self, settings: Settings, options: TelecomConfig | None = None) -> None:
        self.options = options or telecom_config()
        self.pool = postgres_pool(settings, min_size=1, max_size=8)
        self._url = postgres_url(settings)
        self.cache: AggCache | None = None
        self.redis: redis.Redis | None = None
        if settings.redis_url:
            from clickflow.stores.redis import redis_client

            self.redis = redis_client(settings)
            self.cache = AggCache(self.redis, self._url, self.options.cache_ttl_s)
        self.limiter = RateLimiter(
            self.options.rate_limit_per_s, self.options.rate_limit_burst, self.redis
        )

    def user_detail(self, req: DetailRequest) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return user_detail(self.pool, req)
        finally:
            QUERY_SECONDS.labels("user_detail").observe(time.perf_counter() - started)

    def _version(self) -> int | None:
        assert self.cache is not None
        v = self.cache.version()
        if v is None:  # Redis restarted or was never told: take it from PostgreSQL
            with self.pool.connection() as conn:
                row = conn.execute("SELECT version FROM telecom.agg_state WHERE id = 1").fetchone()
            v = int(row[0]) if row else 0
            self.cache.publish_version(v)
        return v

    def global_aggregates_json(self, req: AggRequest) -> tuple[bytes, str]:
        """(JSON answer, cache result: hit / miss / bypass)."""
        started = time.perf_counter()
        try:
            if self.cache is not None:
                try:
                    version = self._version()
                    key = self.cache.key(version or 0, req.cache_key())
                    hit = self.cache.get(key)
                    if hit is not None:
                        CACHE.labels("hit").inc()
                        return hit, "hit"
                    body = orjson.dumps(global_aggregates_sql(self.pool, req))
                    self.cache.put(key, body)
                    CACHE.labels("miss").inc()
                    return body, "miss"
                except redis.RedisError:
                    pass  # the cache is an optimisation: answer from PostgreSQL
            CACHE.labels("bypass").inc()
            return orjson.dumps(global_aggregates_sql(self.pool, req)), "bypass"
        finally:
            QUERY_SECONDS.labels("global_aggregates").observe(time.perf_counter() - started)

    def global_aggregates(self, req: AggRequest) -> tuple[dict[str, Any], str]:
        body, result = self.global_aggregates_json(req)
        return orjson.loads(body), result

    def close(self) -> None:
        self.pool.close()
        if self.redis is not None:
            self.redis.close()


_services: dict[tuple[str, str | None], TelecomQueries] = {}
_services_lock = threading.Lock()


def queries_for(settings: Settings) -> TelecomQueries:
    """One service (pool, cache) per PostgreSQL/Redis pair, shared by HTTP and gRPC."""
    key = (postgres_url(settings), settings.redis_url)
    with _services_lock:
        svc = _services.get(key)
        if svc is None:
            svc = TelecomQueries(settings)
            _services[key] = svc
        return svc
