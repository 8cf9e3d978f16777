"""Page-view queries from the minute and hour rollups (exact: merged aggregate states)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from clickflow.api.deps import ClickHouseDep, require_token

router = APIRouter(
    prefix="/v1/pageviews", tags=["pageviews"], dependencies=[Depends(require_token)]
)

TABLES = {"minute": "page_views_agg_minute", "hour": "page_views_agg_hour"}
Granularity = Literal["minute", "hour"]
# What a ClickHouse DateTime holds: times outside it are a client error, not a query error.
STORABLE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2106, 1, 1, tzinfo=UTC))


class PageStats(BaseModel):
    page_id: str
    views: int
    avg_duration_ms: float
    unique_users: int
    bounce_rate: float


class WindowStats(BaseModel):
    window_start: datetime
    views: int
    avg_duration_ms: float
    unique_users: int
    bounce_rate: float


class Totals(BaseModel):
    views: int
    avg_duration_ms: float
    unique_users: int
    bounce_rate: float
    pages: int


class ErrorRecord(BaseModel):
    error_time: datetime
    error_reason: str
    raw_message: str
    kafka_partition: int
    kafka_offset: int


def time_range(
    from_: Annotated[
        datetime | None, Query(alias="from", description="start (ISO 8601; default: 1 h ago)")
    ] = None,
    to: Annotated[datetime | None, Query(description="end, exclusive (default: now)")] = None,
) -> tuple[datetime, datetime]:
    try:
        end = _utc(to) if to else datetime.now(UTC) + timedelta(minutes=1)
        start = _utc(from_) if from_ else end - timedelta(hours=1, minutes=1)
    except OverflowError:
        start = end = datetime.min.replace(tzinfo=UTC)
    if not (STORABLE[0] <= start <= STORABLE[1] and STORABLE[0] <= end <= STORABLE[1]):
        raise HTTPException(422, detail={"field": "from", "reason": "times must be in 1970..2105"})
    if start >= end:
        raise HTTPException(422, detail={"field": "from", "reason": "must be before 'to'"})
    if end - start > timedelta(days=400):
        raise HTTPException(422, detail={"field": "from", "reason": "range longer than 400 days"})
    return start, end


Range = Annotated[tuple[datetime, datetime], Depends(time_range)]

_MERGED = """
    sumMerge(view_count) AS views,
    if(views = 0, 0, sumMerge(total_duration) / views) AS avg_duration_ms,
    uniqExactMerge(unique_users) AS unique_users,
    if(views = 0, 0, sumMerge(bounce_count) / views) AS bounce_rate
"""


@router.get("/top", response_model=list[PageStats], summary="Top pages in a time range")
def top_pages(
    ch: ClickHouseDep,
    window: Range,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    granularity: Granularity = "minute",
    order_by: Literal["views", "unique_users", "avg_duration_ms", "bounce_rate"] = "views",
) -> list[PageStats]:
    # Table and ORDER BY come from fixed whitelists (Literal-validated), values are parameters.
    sql = (
        f"SELECT page_id, {_MERGED} FROM {TABLES[granularity]} "  # noqa: S608
        "WHERE window_start >= {start:DateTime} AND window_start < {end:DateTime} "
        f"GROUP BY page_id ORDER BY {order_by} DESC, page_id LIMIT {{limit:UInt32}}"
    )
    rows = ch.query(sql, parameters={"start": window[0], "end": window[1], "limit": limit})
    return [PageStats(**dict(zip(rows.column_names, r, strict=True))) for r in rows.result_rows]


@router.get(
    "/pages/{page_id:path}",
    response_model=list[WindowStats],
    summary="One page per minute or per hour",
)
def page_series(
    page_id: str, ch: ClickHouseDep, window: Range, granularity: Granularity = "minute"
) -> list[WindowStats]:
    sql = (
        f"SELECT window_start, {_MERGED} FROM {TABLES[granularity]} "  # noqa: S608
        "WHERE page_id = {page:String} "
        "AND window_start >= {start:DateTime} AND window_start < {end:DateTime} "
        "GROUP BY window_start ORDER BY window_start"
    )
    rows = ch.query(sql, parameters={"page": page_id, "start": window[0], "end": window[1]})
    return [WindowStats(**dict(zip(rows.column_names, r, strict=True))) for r in rows.result_rows]


@router.get("/series", response_model=list[WindowStats], summary="All pages per minute or hour")
def series(
    ch: ClickHouseDep, window: Range, granularity: Granularity = "minute"
) -> list[WindowStats]:
    sql = (
        f"SELECT window_start, {_MERGED} FROM {TABLES[granularity]} "  # noqa: S608
        "WHERE window_start >= {start:DateTime} AND window_start < {end:DateTime} "
        "GROUP BY window_start ORDER BY window_start"
    )
    rows = ch.query(sql, parameters={"start": window[0], "end": window[1]})
    return [WindowStats(**dict(zip(rows.column_names, r, strict=True))) for r in rows.result_rows]


@router.get("/totals", response_model=Totals, summary="Totals over a time range")
def totals(ch: ClickHouseDep, window: Range, granularity: Granularity = "minute") -> Totals:
    sql = (
        f"SELECT {_MERGED}, uniqExact(page_id) AS pages FROM {TABLES[granularity]} "  # noqa: S608
        "WHERE window_start >= {start:DateTime} AND window_start < {end:DateTime}"
    )
    rows = ch.query(sql, parameters={"start": window[0], "end": window[1]})
    return Totals(**dict(zip(rows.column_names, rows.result_rows[0], strict=True)))


@router.get("/errors", response_model=list[ErrorRecord], summary="Latest rejected records")
def errors(ch: ClickHouseDep, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[ErrorRecord]:
    rows = ch.query(
        "SELECT error_time, error_reason, substring(raw_message, 1, 500) AS raw_message, "
        "kafka_partition, kafka_offset FROM processing_errors "
        "ORDER BY error_time DESC LIMIT {limit:UInt32}",
        parameters={"limit": limit},
    )
    return [ErrorRecord(**dict(zip(rows.column_names, r, strict=True))) for r in rows.result_rows]


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
