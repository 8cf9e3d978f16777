"""The telecom gRPC service (port 9090): GetUserDetail and GetGlobalAgg.

Answers come from :mod:`clickflow.domains.telecom.queries`, the module behind the HTTP
routes, and are copied field by field into the messages of ``proto/telecom.proto``. The same
bearer token (metadata ``authorization: Bearer <token>``) and rate limit apply.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import orjson

from clickflow.config import Settings
from clickflow.domains.telecom.events import EventType
from clickflow.domains.telecom.proto import telecom_pb2 as pb
from clickflow.domains.telecom.proto import telecom_pb2_grpc as pb_grpc
from clickflow.domains.telecom.queries import (
    AggRequest,
    DetailRequest,
    Granularity,
    QueryError,
    TelecomQueries,
    queries_for,
)
from clickflow.domains.telecom.ratelimit import REJECTED
from clickflow.grpc_services import ServingServer, listen, new_server


def _ts(text: str, default: datetime) -> datetime:
    if not text:
        return default
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def detail_message(d: dict[str, Any]) -> pb.UserDetailResponse:
    msg = pb.UserDetailResponse(
        user_id=d["user_id"],
        events=[
            pb.UsageEvent(
                source_id=e["source_id"],
                event_id=e["event_id"],
                type=e["type"],
                started_at=e["started_at"],
                ended_at=e["ended_at"],
                duration_sec=e["duration_sec"],
                bytes_up=e["bytes_up"],
                bytes_down=e["bytes_down"],
                meta_json=orjson.dumps(e["meta"]).decode(),
            )
            for e in d["events"]
        ],
        totals=[pb.TypeTotals(**t) for t in d["totals"] or []],
        has_totals=d["totals"] is not None,
        next_cursor=d["next_cursor"] or "",
        to=d["to"],
    )
    setattr(msg, "from", d["from"])  # noqa: B010  # "from" is a Python keyword
    return msg


def agg_message(d: dict[str, Any]) -> pb.GlobalAggResponse:
    msg = pb.GlobalAggResponse(
        granularity=d["granularity"],
        to=d["to"],
        type=d["type"] or "",
        rows=[pb.AggRow(**r) for r in d["rows"]],
    )
    setattr(msg, "from", d["from"])  # noqa: B010
    return msg


class TelecomUsageService(pb_grpc.TelecomUsageServicer):
    def __init__(self, settings: Settings, queries: TelecomQueries) -> None:
        self._token = settings.api_token
        self._q = queries

    def _guard(self, context: grpc.ServicerContext) -> None:
        md = dict(context.invocation_metadata() or ())
        auth = str(md.get("authorization", ""))
        if self._token:
            given = auth.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if auth:
            who = "t:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
        else:  # "ipv4:127.0.0.1:54321" -> the address without the port
            who = "ip:" + context.peer().rsplit(":", 1)[0].split(":", 1)[-1]
        if not self._q.limiter.allow(who):
            REJECTED.labels("grpc").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")

    def GetUserDetail(  # noqa: N802  # gRPC method name
        self, request: pb.UserDetailRequest, context: grpc.ServicerContext
    ) -> pb.UserDetailResponse:
        self._guard(context)
        try:
            if not 1 <= len(request.user_id) <= 64:
                raise QueryError("user_id must be 1..64 characters")
            if not 0 <= request.limit <= 1000:
                raise QueryError("limit must be 1..1000")
            end = _ts(request.to, datetime.now(UTC))
            start = _ts(getattr(request, "from"), end - timedelta(days=30))
            d = self._q.user_detail(
                DetailRequest(request.user_id, start, end, request.limit or 100, request.cursor)
            )
        except (QueryError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return detail_message(d)

    def GetGlobalAgg(  # noqa: N802  # gRPC method name
        self, request: pb.GlobalAggRequest, context: grpc.ServicerContext
    ) -> pb.GlobalAggResponse:
        self._guard(context)
        try:
            gran = Granularity(request.granularity or "day")
            end = date.fromisoformat(request.to) if request.to else datetime.now(UTC).date()
            days = 30 if gran is Granularity.DAY else 365
            raw_from = getattr(request, "from")
            start = date.fromisoformat(raw_from) if raw_from else end - timedelta(days=days)
            kind = EventType(request.type) if request.type else None
            d, cache = self._q.global_aggregates(AggRequest(gran, start, end, kind))
        except (QueryError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        context.set_trailing_metadata((("x-cache", cache),))
        return agg_message(d)


#: The full names of the services ``register`` adds (health checks and reflection list them).
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TelecomUsage"].full_name
SERVICE_NAMES = (SERVICE_NAME,)


def register(server: grpc.Server, settings: Settings) -> bool:
    """The ``grpc_server.py`` convention: add the service to the shared server when these
    settings have PostgreSQL (the telecom store); False otherwise."""
    if not settings.postgres_url:
        return False
    service = TelecomUsageService(settings, queries_for(settings))
    pb_grpc.add_TelecomUsageServicer_to_server(service, server)
    return True


def start_server(settings: Settings, port: int | None = None) -> ServingServer:
    """This service alone on ``settings.host:settings.grpc_port`` (or ``port``), with health
    and reflection; returns it."""
    server = new_server()
    pb_grpc.add_TelecomUsageServicer_to_server(
        TelecomUsageService(settings, queries_for(settings)), server
    )
    return listen(server, settings, port, SERVICE_NAMES)
