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
    #: clicks stamped further ahead of their record's Kafka timestamp go to the DLQ
    max_future_s: float = Field(default=300.0, ge=0)
    #: copies of a click_id less than this far apart (Kafka time) are always counted once
    #: (claims in Redis, see claims.py); copies up to twice as far apart usually are too
    dedup_window_s: float = Field(default=24 * 3600.0, ge=1)
    #: claims outlive their window by this much: a consumer outage up to this long between a
    #: click and its copy still finds the claim
    dedup_grace_s: float = Field(default=24 * 3600.0, ge=0)
    #: `backfill --every`: how far back each scheduled run reconciles
    backfill_lookback_s: float = Field(default=6 * 3600.0, gt=0)
    #: popular_ads answers are cached this long (seconds); 0 disables the cache
    popular_cache_s: float = Field(default=5.0, ge=0)
