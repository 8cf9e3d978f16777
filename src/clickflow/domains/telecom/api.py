"""HTTP routes of the telecom domain (mounted by the query API on port 8000).

* ``GET /api/v1/users/{user_id}/detail``  a user's events for a period, paginated (cursor)
* ``GET /api/v1/aggregates``              global aggregates by day or month, per type

Both need the bearer token when CLICKFLOW_API_TOKEN is set, and are rate limited per
client (CLICKFLOW_TELECOM_RATE_LIMIT_PER_S / _BURST; 429 with Retry-After). Aggregates are
served through the Redis cache (``X-Cache: hit|miss|bypass``). The gRPC service answers the
same questions through the same module (:mod:`clickflow.domains.telecom.queries`).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from clickflow.api.deps import SettingsDep, require_token
from clickflow.domains.telecom.events import EventType
from clickflow.domains.telecom.queries import (
    AggRequest,
    DetailRequest,
    Granularity,
    QueryError,
    TelecomQueries,
    queries_for,
)


def queries_dep(settings: SettingsDep) -> TelecomQueries:
    return queries_for(settings)


QueriesDep = Annotated[TelecomQueries, Depends(queries_dep)]


def client_id(request: Request) -> str:
    auth = request.headers.get("authorization")
    if auth:
        return "t:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "ip:" + (request.client.host if request.client else "unknown")


def rate_limit(request: Request, queries: QueriesDep) -> None:
    limiter = queries.limiter
    if not limiter.allow(client_id(request)):
        from clickflow.domains.telecom.ratelimit import REJECTED

        REJECTED.labels("http").inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail={"reason": "rate limit exceeded", "limit_per_s": limiter.rate},
            headers={"Retry-After": str(limiter.retry_after())},
        )


router = APIRouter(
    prefix="/api/v1",
    tags=["telecom"],
    dependencies=[Depends(require_token), Depends(rate_limit)],
)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@router.get("/users/{user_id}/detail", summary="A user's usage events for a period")
def user_detail(
    queries: QueriesDep,
    user_id: Annotated[str, Path(min_length=1, max_length=64)],
    start: Annotated[
        datetime | None, Query(alias="from", description="inclusive; default: to - 30 days")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="exclusive; default: now")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor")] = None,
) -> dict:
    end_ts = _aware(end) if end else datetime.now(UTC)
    start_ts = _aware(start) if start else end_ts - timedelta(days=30)
    try:
        return queries.user_detail(DetailRequest(user_id, start_ts, end_ts, limit, cursor))
    except QueryError as e:
        raise HTTPException(422, detail={"reason": str(e)}) from None


@router.get("/aggregates", summary="Global aggregates by day or month, per event type")
def aggregates(
    queries: QueriesDep,
    granularity: Granularity = Granularity.DAY,
    start: Annotated[
        date | None, Query(alias="from", description="inclusive; default: 30 days / 12 months ago")
    ] = None,
    end: Annotated[date | None, Query(alias="to", description="inclusive; default: today")] = None,
    type: EventType | None = None,
) -> Response:
    end_d = end or datetime.now(UTC).date()
    if start is None:
        days = 30 if granularity is Granularity.DAY else 365
        start = end_d - timedelta(days=days)
    try:
        body, cache = queries.global_aggregates_json(AggRequest(granularity, start, end_d, type))
    except QueryError as e:
        raise HTTPException(422, detail={"reason": str(e)}) from None
    return Response(body, media_type="application/json", headers={"X-Cache": cache})
