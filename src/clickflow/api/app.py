"""The query API (port 8000): one router per domain, mounted here and nowhere else."""

from __future__ import annotations

from fastapi import FastAPI

from clickflow.api import dashboard, pipelines
from clickflow.config import Settings, get_settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.health import Check, dependency_checks, health_router


def create_app(settings: Settings | None = None, checks: dict[str, Check] | None = None) -> FastAPI:
    """``checks``: more health checks (the pipelines `serve` runs) beside the dependencies'."""
    settings = settings or get_settings()
    app = FastAPI(
        title="clickflow query API",
        version="0.1.0",
        description="Page views, UGC, ad clicks and telecom usage, answered from the stores.",
    )
    app.state.settings = settings
    uses = ["kafka", "clickhouse"]
    if settings.redis_url:
        uses.append("redis")
    if settings.postgres_url:
        uses.append("postgres")
    app.include_router(
        health_router("api", {**dependency_checks(settings, uses), **(checks or {})})
    )
    for domain in DOMAINS:
        mod = domain_module(domain, "api")
        if mod is not None and hasattr(mod, "router"):
            app.include_router(mod.router)
    app.include_router(pipelines.router)
    app.include_router(dashboard.router)
    return app
