"""adclicks settings: environment variables prefixed ``CLICKFLOW_ADCLICKS_``.

Kept in the domain (not in the global Settings) because only this domain reads them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AdClicksConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_ADCLICKS_", extra="ignore")

    topic: str = "adclicks"
    partitions: int = Field(default=4, ge=1, le=1024)
    #: watermark = max event time seen in a partition - allowed lateness
    allowed_lateness_s: float = Field(default=15.0, ge=0)
    #: clicks stamped further ahead of processing time than this go to the DLQ
    max_future_s: float = Field(default=300.0, ge=0)
    #: how many recent records per partition the dedup cache covers (and reloads after a
    #: restart or a rebalance); duplicates further apart are found by `backfill`
    dedup_window: int = Field(default=100_000, ge=1000)
    #: ... written at most this long (Kafka time) before the batch that triggers the reload
    dedup_horizon_s: float = Field(default=3600.0, gt=0)
    #: popular_ads answers are cached this long (seconds); 0 disables the cache
    popular_cache_s: float = Field(default=5.0, ge=0)
