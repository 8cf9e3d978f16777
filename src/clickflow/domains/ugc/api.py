"""UGC query routes: clicks, time on page, quality switches, completions, search filters.

Every route takes a half-open time range ``[start, end)`` (ISO 8601; default: the last 24 h)
and runs parameterized SQL only. Event tables are ReplacingMergeTree (exact re-sends
collapse), so they are read with FINAL; so is ``ugc_page_view`` (a paired row replaces an
unpaired one of the same page view, see :mod:`clickflow.domains.ugc.pairing`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from clickflow.api.deps import ClickHouseDep, require_token

router = APIRouter(prefix="/v1/ugc", tags=["ugc"], dependencies=[Depends(require_token)])

MAX_RANGE = timedelta(days=366)


# Constant SQL; the range bounds and every user input are query parameters.
CLICKS_SQL = {
    "element_type": """
        SELECT element_type, count() AS clicks FROM ugc_element_click FINAL
        WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
        GROUP BY element_type ORDER BY clicks DESC, element_type
    """,
    "page_type": """
        SELECT page_type, count() AS clicks FROM ugc_element_click FINAL
        WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
        GROUP BY page_type ORDER BY clicks DESC, page_type
    """,
    "both": """
        SELECT element_type, page_type, count() AS clicks FROM ugc_element_click FINAL
        WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
        GROUP BY element_type, page_type ORDER BY clicks DESC, element_type, page_type
    """,
}
TIME_ON_PAGE_SQL = """
    SELECT page_type, count() AS page_views, countIf(paired = 1) AS ended,
           avgIf(duration_seconds, paired = 1) AS avg_seconds
    FROM ugc_page_view FINAL
    WHERE started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}
    GROUP BY page_type ORDER BY page_views DESC, page_type
"""
QUALITY_SQL = """
    SELECT old_quality, new_quality, count() AS switches FROM ugc_quality_change FINAL
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
      AND ({video_id:Nullable(String)} IS NULL OR video_id = {video_id:Nullable(String)})
    GROUP BY old_quality, new_quality ORDER BY switches DESC, old_quality, new_quality
"""
COMPLETIONS_SQL = """
    SELECT video_id, count() AS completions, countIf(duration_total = 1) AS full
    FROM ugc_video_complete FINAL
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY video_id ORDER BY completions DESC, video_id LIMIT {limit:UInt32}
"""
FILTERS_SQL = """
    SELECT filters, count() AS uses FROM ugc_search_filter FINAL
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY filters ORDER BY uses DESC, filters LIMIT {limit:UInt32}
"""


class TimeRange(BaseModel):
    start: datetime
    end: datetime


# What the tables' DateTime64 columns hold here: times outside are a client error.
STORABLE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2106, 1, 1, tzinfo=UTC))


def time_range(
    start: Annotated[datetime | None, Query(description="from (inclusive), ISO 8601")] = None,
    end: Annotated[datetime | None, Query(description="to (exclusive), ISO 8601")] = None,
) -> TimeRange:
    try:
        end = _utc(end) if end else datetime.now(UTC)
        start = _utc(start) if start else end - timedelta(days=1)
    except OverflowError:
        start = end = datetime.min.replace(tzinfo=UTC)
    if not (STORABLE[0] <= start <= STORABLE[1] and STORABLE[0] <= end <= STORABLE[1]):
        raise HTTPException(422, detail={"field": "start", "reason": "times must be in 1970..2105"})
    if start >= end:
        raise HTTPException(
            422,
            detail={"field": "start", "reason": "start must be before end"},
        )
    if end - start > MAX_RANGE:
        raise HTTPException(
            422,
            detail={"field": "start", "reason": "the range is limited to 366 days"},
        )
    return TimeRange(start=start, end=end)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


RangeDep = Annotated[TimeRange, Depends(time_range)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _params(r: TimeRange, **extra: object) -> dict:
    return {"start": r.start, "end": r.end, **extra}


class ClickCount(BaseModel):
    element_type: str | None
    page_type: str | None
    clicks: int


@router.get("/clicks", response_model=list[ClickCount])
def clicks(
    ch: ClickHouseDep,
    r: RangeDep,
    by: Annotated[Literal["element_type", "page_type", "both"], Query()] = "both",
) -> list[ClickCount]:
    """Clicks by element type and/or page type."""
    rows = ch.query(CLICKS_SQL[by], parameters=_params(r)).named_results()
    return [
        ClickCount(
            element_type=row.get("element_type"),
            page_type=row.get("page_type"),
            clicks=row["clicks"],
        )
        for row in rows
    ]


class TimeOnPage(BaseModel):
    page_type: str
    page_views: int
    ended: int
    avg_seconds: float | None
    unended_share: float


@router.get("/time-on-page", response_model=list[TimeOnPage])
def time_on_page(ch: ClickHouseDep, r: RangeDep) -> list[TimeOnPage]:
    """Average time on page by page type (paired page views); page views without an end
    count in ``page_views`` and ``unended_share`` only."""
    rows = ch.query(TIME_ON_PAGE_SQL, parameters=_params(r)).named_results()
    out = []
    for row in rows:
        avg = row["avg_seconds"]
        out.append(
            TimeOnPage(
                page_type=row["page_type"],
                page_views=row["page_views"],
                ended=row["ended"],
                avg_seconds=None if row["ended"] == 0 else round(float(avg), 3),
                unended_share=round(1 - row["ended"] / row["page_views"], 6),
            )
        )
    return out


class QualitySwitch(BaseModel):
    old_quality: int
    new_quality: int
    switches: int


@router.get("/quality-switches", response_model=list[QualitySwitch])
def quality_switches(
    ch: ClickHouseDep,
    r: RangeDep,
    video_id: Annotated[str | None, Query(max_length=256)] = None,
) -> list[QualitySwitch]:
    """Quality switches (from → to), optionally for one video."""
    rows = ch.query(QUALITY_SQL, parameters=_params(r, video_id=video_id)).named_results()
    return [QualitySwitch(**row) for row in rows]


class Completions(BaseModel):
    video_id: str
    completions: int
    full: int


@router.get("/completions", response_model=list[Completions])
def completions(ch: ClickHouseDep, r: RangeDep, limit: Limit = 100) -> list[Completions]:
    """Completed views per video (``full``: watched with duration_total = true), top first."""
    rows = ch.query(COMPLETIONS_SQL, parameters=_params(r, limit=limit)).named_results()
    return [Completions(**row) for row in rows]


class FilterUse(BaseModel):
    filters: str
    uses: int


@router.get("/search-filters", response_model=list[FilterUse])
def search_filters(ch: ClickHouseDep, r: RangeDep, limit: Limit = 20) -> list[FilterUse]:
    """The most used search filters."""
    rows = ch.query(FILTERS_SQL, parameters=_params(r, limit=limit)).named_results()
    return [FilterUse(**row) for row in rows]
