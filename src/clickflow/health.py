"""`GET /healthz`, `GET /metrics` and `GET /debug/profile`, shared by every HTTP service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clickflow.config import Settings
from clickflow.kafka.topics import kafka_reachable
from clickflow.observability import profiling

Check = Callable[[], str]


def dependency_checks(settings: Settings, uses: list[str]) -> dict[str, Check]:
    """Checks for the named dependencies: kafka, clickhouse, postgres, redis."""
    from clickflow.stores import clickhouse, postgres, redis

    table: dict[str, Check] = {
        "kafka": lambda: "ok" if kafka_reachable(settings.kafka_bootstrap) else "unreachable",
        "clickhouse": lambda: clickhouse.ping(settings),
        "postgres": lambda: postgres.ping(settings),
        "redis": lambda: redis.ping(settings),
    }
    return {name: table[name] for name in uses}


def health_router(service: str, checks: dict[str, Check]) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", summary="Liveness and the state of each dependency")
    async def healthz() -> JSONResponse:
        results = await asyncio.gather(*(asyncio.to_thread(fn) for fn in checks.values()))
        deps = dict(zip(checks, results, strict=True))
        ok = all(v == "ok" for v in deps.values())
        return JSONResponse(
            {"service": service, "status": "ok" if ok else "degraded", "dependencies": deps},
            status_code=200 if ok else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    router.include_router(profiling.router)  # every service: off unless CLICKFLOW_PROFILING=1
    return router
