"""Redis access (redis-py). URLs may be ``redis://host:port/db`` or ``unix:///path.sock``."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from clickflow.config import Settings


def redis_url(settings: Settings, db: int | None = None) -> str:
    if not settings.redis_url:
        raise RuntimeError(
            "CLICKFLOW_REDIS_URL is not set: start `clickflow up` (embedded Redis) "
            "or point it at a server"
        )
    url = settings.redis_url
    if db is None:
        return url
    if url.startswith("unix://"):
        base = url.split("?")[0]
        return f"{base}?db={db}"
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/')[0]}/{db}"


def redis_client(settings: Settings, db: int | None = None) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings, db), socket_timeout=5, socket_connect_timeout=3)


def async_redis_client(settings: Settings, db: int | None = None) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        redis_url(settings, db), socket_timeout=5, socket_connect_timeout=3
    )


def ping(settings: Settings) -> str:
    try:
        redis_client(settings).ping()
        return "ok"
    except Exception as e:
        return f"error: {type(e).__name__}: {str(e)[:200]}"
