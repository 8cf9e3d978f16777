"""Page-view settings: environment variables prefixed ``CLICKFLOW_PAGEVIEWS_``.

Kept in the domain (not in the global Settings) because only this domain reads them.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from clickflow.kafka.batch import BatchTrigger, Delivery


class PageViewsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_PAGEVIEWS_", extra="ignore")

    topic: str = Field(default="page_views", min_length=1)
    #: when the pipeline hands a batch over: ``count`` (N records), ``time`` (every X s) or
    #: ``hybrid`` (whichever comes first); ``clickflow process`` flags override it
    batch_mode: Literal["count", "time", "hybrid"] = "hybrid"
    #: Every insert costs ClickHouse ~12 ms of CPU whatever its size (a part in the raw table
    #: and in both rollups, deduplication records), each batch adds its intent record, and
    #: small parts are merged again. CPU of the bench process per record (2-core Intel Xeon,
    #: 2026-12-02, loaded): ~11 us with 10,000-record batches, 8-11 with 50,000, 8.7-9.7 with
    #: 100,000 (docs/design.md, "Where the time goes: page views"). Below ``batch_seconds``
    #: worth of traffic a batch is still cut by time (freshness at low rates unchanged).
    batch_records: int = Field(default=100_000, ge=1)
    batch_seconds: float = Field(default=1.0, gt=0)
    #: hybrid mode, sparse traffic: a batch of fewer than ``sparse_records`` records waits
    #: for more up to ``sparse_seconds`` after the last one (``BatchTrigger``): the demo's
    #: few dozen views a second are inserted every 3 s instead of every second. From
    #: ``sparse_records`` a second up, batches are cut every ``batch_seconds`` as before.
    sparse_records: int = Field(default=200, ge=1)
    sparse_seconds: float | None = Field(default=3.0, gt=0)
    delivery: Delivery = Delivery.EXACTLY_ONCE

    def trigger(self) -> BatchTrigger:
        trigger = BatchTrigger.from_mode(self.batch_mode, self.batch_records, self.batch_seconds)
        if self.batch_mode != "hybrid" or not self.sparse_seconds:
            return trigger
        if self.sparse_seconds <= self.batch_seconds:
            return trigger
        return replace(
            trigger, sparse_records=self.sparse_records, sparse_seconds=self.sparse_seconds
        )


@lru_cache(maxsize=1)
def pageviews_config() -> PageViewsConfig:
    return PageViewsConfig()
