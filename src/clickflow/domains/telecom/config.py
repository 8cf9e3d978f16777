"""Telecom settings (environment variables prefixed ``CLICKFLOW_TELECOM_``).

They live with the domain rather than in ``clickflow.config``: nothing else uses them.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TelecomConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_TELECOM_", extra="ignore")

    topic: str = Field(default="events.telecom", min_length=1)
    partitions: int = Field(default=8, ge=1, le=1024)
    #: API rate limit per client (bearer token, else IP) and method: refill rate and burst;
    #: 0 disables it
    rate_limit_per_s: float = Field(default=200.0, ge=0)
    rate_limit_burst: int = Field(default=400, ge=0)
    #: safety TTL of cached aggregates (the version key invalidates them on every change);
    #: Redis refuses an expiry of 0
    cache_ttl_s: int = Field(default=300, gt=0)
    max_page_size: int = Field(default=1000, ge=1)


@lru_cache(maxsize=1)
def telecom_config() -> TelecomConfig:
    return TelecomConfig()
