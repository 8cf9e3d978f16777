"""Query API of the adclicks domain (mounted by the query app on port 8000).

* ``GET /v1/ads/{ad_id}/aggregated_count?from=...&to=...&filter=...``
* ``GET /v1/ads/popular_ads?topN=...&window=...&filter=...``

Counts come from the minute aggregate (``ad_clicks_minute``) unless the filter names a
raw-only attribute (user_id, ip): then from ``ad_clicks_raw`` (bloom-filter indexed), and the
answer says ``"source": "raw"``. Every answer carries ``final_through``: the last minute no
partition's watermark can still move (see :mod:`.watermark`).

SQL is parameterized: filter keys are checked against a whitelist and mapped to fixed column
names; values only ever travel as query parameters.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, Field

from clickflow.api.deps import ClickHouseDep, SettingsDep, require_token
from clickflow.config import Settings
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.events import AGGREGATE_DIMENSIONS, RAW_DIMENSIONS
from clickflow.domains.adclicks.watermark import read_finality

FILTER_DOC = (
    "Comma-separated `key=value` conditions, all of which must hold; `|` separates "
    "alternatives for one key. Keys: `country` (ISO code, e.g. US), `device` (mobile, "
    "desktop, tablet, tv, other), `os` (android, ios, windows, macos, linux, other) — "
    "answered from the minute aggregate — and `user_id`, `ip` — answered from the raw click "
    "store (slower). Example: `country=US|CA,device=mobile`. URL-encode it "
    "(`country%3DUS%7CCA%2Cdevice%3Dmobile`)."
)
FILTER_KEYS = AGGREGATE_DIMENSIONS + RAW_DIMENSIONS
MAX_VALUES = 100
MINUTE = timedelta(minutes=1)

router = APIRouter(prefix="/v1/ads", tags=["adclicks"], dependencies=[Depends(require_token)])


@lru_cache(maxsize=1)
def adclicks_config() -> AdClicksConfig:
    return AdClicksConfig()


ConfigDep = Annotated[AdClicksConfig, Depends(adclicks_config)]


class CountAnswer(BaseModel):
    ad_id: str
    from_: datetime = Field(alias="from", description="first minute counted (inclusive)")
    to: datetime = Field(description="end of the range (exclusive, minute-aligned)")
    filter: dict[str, list[str]]
    count: int
    source: str = Field(description="aggregate (minute buckets) or raw (raw click store)")
    final_through: datetime | None = Field(
        description="start of the last minute that is final (watermark passed); null if none"
    )
    final: bool = Field(description="true when every minute of the range is final")


class PopularAd(BaseModel):
    ad_id: str
    count: int


class PopularAnswer(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    window: int
    top_n: int
    filter: dict[str, list[str]]
    ads: list[PopularAd]
    source: str
    final_through: datetime | None
    final: bool
    cached: bool


# -- filters -----------------------------------------------------------------------------------


def parse_filter(text: str | None) -> dict[str, list[str]]:
    """``country=US|CA,device=mobile`` -> {"country": ["US", "CA"], "device": ["mobile"]}."""
    out: dict[str, list[str]] = {}
    if not text or not text.strip():
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            _bad_filter(f"condition {part[:50]!r} is not key=value")
        if key not in FILTER_KEYS:
            _bad_filter(f"unknown filter key {key[:50]!r}; allowed: {', '.join(FILTER_KEYS)}")
        if key in out:
            _bad_filter(f"filter key {key!r} given twice; use | for alternatives")
        values = [v.strip() for v in value.split("|")]
        if any(not v or len(v) > 128 for v in values) or len(values) > MAX_VALUES:
            _bad_filter(f"filter {key!r} needs 1..{MAX_VALUES} non-empty values of <= 128 chars")
        out[key] = values
    return out


def _bad_filter(reason: str) -> None:
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, detail={"field": "filter", "reason": reason}
    )


# Fixed SQL fragments, one per whitelisted key: request text never becomes SQL.
_CONDITION_SQL = {k: f" AND {k} IN {{f_{k}:Array(String)}}" for k in FILTER_KEYS}

COUNT_AGGREGATE_SQL = """
SELECT sum(clicks) FROM ad_clicks_minute
WHERE ad_id = {ad:String} AND minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}
/*filters*/
"""
COUNT_RAW_SQL = """
SELECT count() FROM ad_clicks_raw
WHERE ad_id = {ad:String}
  AND click_time >= {start:DateTime64(3, 'UTC')} AND click_time < {end:DateTime64(3, 'UTC')}
/*filters*/
"""
POPULAR_AGGREGATE_SQL = """
SELECT ad_id, sum(clicks) AS c FROM ad_clicks_minute
WHERE minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}
/*filters*/
GROUP BY ad_id HAVING c > 0
ORDER BY c DESC, ad_id LIMIT {n:UInt32}
"""
POPULAR_RAW_SQL = """
SELECT ad_id, count() AS c FROM ad_clicks_raw
WHERE click_time >= {start:DateTime64(3, 'UTC')} AND click_time < {end:DateTime64(3, 'UTC')}
/*filters*/
GROUP BY ad_id
ORDER BY c DESC, ad_id LIMIT {n:UInt32}
"""


def with_filters(template: str, filters: dict[str, list[str]], params: dict[str, Any]) -> str:
    """Put the whitelisted conditions into ``template``; the values go into ``params``."""
    conditions = []
    for key in FILTER_KEYS:
        if key in filters:
            params[f"f_{key}"] = filters[key]
            conditions.append(_CONDITION_SQL[key])
    return template.replace("/*filters*/", "".join(conditions))


def _uses_raw(filters: dict[str, list[str]]) -> bool:
    return any(k in RAW_DIMENSIONS for k in filters)


class _TtlCache:
    def __init__(self, max_entries: int = 1024) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple, tuple[float, dict]] = {}
        self._max = max_entries

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None
            return hit[1]

    def put(self, key: tuple, ttl: float, value: dict) -> None:
        with self._lock:
            if len(self._data) >= self._max:
                now = time.monotonic()
                self._data = {k: v for k, v in self._data.items() if v[0] >= now}
                if len(self._data) >= self._max:
                    self._data.clear()
            self._data[key] = (time.monotonic() + ttl, value)


popular_cache = _TtlCache()
_finality_cache = _TtlCache(64)
FINALITY_CACHE_S = 1.0  # watermarks move once per batch anyway


# -- time ----------------------------------------------------------------------------------------


# What a ClickHouse DateTime holds: times outside it are a client error, not a query error.
STORABLE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2106, 1, 1, tzinfo=UTC))


def _utc_minute(t: datetime) -> datetime:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    try:
        return t.astimezone(UTC).replace(second=0, microsecond=0)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def _storable(t: datetime, field: str) -> datetime:
    if not STORABLE[0] <= t <= STORABLE[1]:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={"field": field, "reason": "times must be in 1970..2105"},
        )
    return t


def _current_minute() -> datetime:
    return _utc_minute(datetime.now(UTC))


def _finality(
    client: ClickHouseDep, settings: Settings, cfg: AdClicksConfig, to: datetime
) -> tuple:
    key = (settings.clickhouse_url, settings.clickhouse_database, cfg.topic, cfg.partitions)
    hit = _finality_cache.get(key)
    if hit is None:
        # The pipeline never moves a watermark past processing time - lateness; the ceiling
        # also holds back rows written before it kept that rule, or by a clock ahead.
        ceiling = int(time.time() * 1000) - int(cfg.allowed_lateness_s * 1000)
        fin = read_finality(client, cfg.topic, cfg.partitions, ceiling)
        hit = {"ms": fin.final_through_ms}
        _finality_cache.put(key, FINALITY_CACHE_S, hit)
    ms = hit["ms"]
    if ms is None:
        return None, False
    through = datetime.fromtimestamp(ms / 1000, UTC)
    return through, to <= through + MINUTE


# -- routes --------------------------------------------------------------------------------------


@router.get(
    "/{ad_id}/aggregated_count",
    response_model=CountAnswer,
    summary="Clicks of one ad in [from, to), optionally filtered",
    description="Minute granularity: `from` is rounded down to its minute, `to` too (exclusive). "
    "Defaults: `to` = the start of the current minute, `from` = `to` - 1 minute (the last "
    "complete minute). Times are ISO 8601 (UTC if no offset) or epoch seconds.",
)
def aggregated_count(
    client: ClickHouseDep,
    settings: SettingsDep,
    cfg: ConfigDep,
    ad_id: Annotated[str, Path(min_length=1, max_length=64)],
    from_: Annotated[
        datetime | None, Query(alias="from", description="first minute (default: to - 1 min)")
    ] = None,
    to: Annotated[
        datetime | None, Query(description="end minute, exclusive (default: current minute)")
    ] = None,
    filter: Annotated[str | None, Query(description=FILTER_DOC, max_length=4096)] = None,
) -> dict:
    end = _storable(_utc_minute(to) if to else _current_minute(), "to")
    start = _storable(_utc_minute(from_) if from_ else end - MINUTE, "from")
    if start >= end:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={"field": "from", "reason": "from must be at least one minute before to"},
        )
    filters = parse_filter(filter)
    params: dict[str, Any] = {"ad": ad_id, "start": start, "end": end}
    raw = _uses_raw(filters)
    source = "raw" if raw else "aggregate"
    sql = with_filters(COUNT_RAW_SQL if raw else COUNT_AGGREGATE_SQL, filters, params)
    rows = client.query(sql, parameters=params).result_rows
    through, final = _finality(client, settings, cfg, end)
    return {
        "ad_id": ad_id,
        "from": start,
        "to": end,
        "filter": filters,
        "count": int(rows[0][0]) if rows else 0,
        "source": source,
        "final_through": through,
        "final": final,
    }


@router.get(
    "/popular_ads",
    response_model=PopularAnswer,
    summary="The topN most clicked ads in the last `window` minutes, optionally filtered",
    description="The window is the `window` complete minutes before `to` (default: the "
    "start of the current minute). Answers are cached for a few seconds "
    "(CLICKFLOW_ADCLICKS_POPULAR_CACHE_S). Ties are broken by ad_id.",
)
def popular_ads(
    client: ClickHouseDep,
    settings: SettingsDep,
    cfg: ConfigDep,
    top_n: Annotated[int, Query(alias="topN", ge=1, le=1000)] = 10,
    window: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="M, in minutes")] = 1,
    filter: Annotated[str | None, Query(description=FILTER_DOC, max_length=4096)] = None,
    to: Annotated[
        datetime | None,
        Query(description="end of the window, exclusive (default: the current minute)"),
    ] = None,
) -> dict:
    end = _storable(_utc_minute(to) if to else _current_minute(), "to")
    start = _storable(end - window * MINUTE, "window")
    filters = parse_filter(filter)
    key = (
        settings.clickhouse_url,
        settings.clickhouse_database,
        cfg.topic,
        top_n,
        window,
        end,
        tuple(sorted((k, tuple(v)) for k, v in filters.items())),
    )
    if cfg.popular_cache_s > 0:
        hit = popular_cache.get(key)
        if hit is not None:
            return {**hit, "cached": True}
    params: dict[str, Any] = {"start": start, "end": end, "n": top_n}
    raw = _uses_raw(filters)
    source = "raw" if raw else "aggregate"
    sql = with_filters(POPULAR_RAW_SQL if raw else POPULAR_AGGREGATE_SQL, filters, params)
    rows = client.query(sql, parameters=params).result_rows
    through, final = _finality(client, settings, cfg, end)
    answer = {
        "from": start,
        "to": end,
        "window": window,
        "top_n": top_n,
        "filter": filters,
        "ads": [{"ad_id": a, "count": int(c)} for a, c in rows],
        "source": source,
        "final_through": through,
        "final": final,
        "cached": False,
    }
    if cfg.popular_cache_s > 0:
        popular_cache.put(key, cfg.popular_cache_s, answer)
    return answer
