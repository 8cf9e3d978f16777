"""Telecom settings (environment variables prefixed ``CLICKFLOW_TELECOM_``).

They live with the domain rather than in ``clickflow.config``: nothing else uses them.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class TelecomConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_TELECOM_", extra="ignore")

    topic: str = "events.telecom"
    partitions: int = 8
    #: API rate limit per client (bearer token, else IP) and method: refill rate and burst;
    #: 0 disables it
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    #: safety TTL of cached aggregates (the version key invalidates them on every change)
    cache_ttl_s: int = 300
    max_page_size: int = 1000


@lru_cache(maxsize=1)
def telecom_config() -> TelecomConfig:
    return TelecomConfig()
