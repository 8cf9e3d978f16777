"""The collector (port 8001): validates events and publishes them to Kafka."""

from __future__ import annotations

from fastapi import FastAPI

from clickflow.config import Settings, get_settings
from clickflow.health import dependency_checks, health_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="clickflow collector", version="0.1.0", docs_url="/docs")
    app.state.settings = settings
    uses = ["kafka"] + (["redis"] if settings.redis_url else [])
    app.include_router(health_router("collector", dependency_checks(settings, uses)))
    return app
