"""UGC pipeline settings: environment variables prefixed ``CLICKFLOW_UGC_``.

Operation mode (the seed runs its ETL "by schedule"; continuous is the default here):

* continuous: ``CLICKFLOW_UGC_BATCH_RECORDS`` / ``CLICKFLOW_UGC_BATCH_SECONDS`` — a batch is
  handed over at N records or X seconds, whichever comes first;
* scheduled: ``CLICKFLOW_UGC_SCHEDULE_SECONDS=X`` — one batch every X seconds with whatever
  arrived meanwhile (the seed's "ETL by schedule").

This chooses the pipeline's default trigger, used by ``clickflow serve``; ``clickflow process
ugc`` takes the trigger from its own flags (``--mode time --seconds X`` = scheduled;
``--records 50000`` for throughput: every chunk costs one insert per table, so big batches
are cheaper per event, and the timer still flushes a trickle every second).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from clickflow.domains.ugc.events import UGC_TOPIC
from clickflow.kafka.batch import BatchTrigger


class UgcConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_UGC_", extra="ignore")

    topic: str = UGC_TOPIC
    partitions: int = Field(default=4, ge=1)

    # Operation mode (see the module docstring).
    schedule_seconds: float | None = Field(default=None, gt=0)
    batch_records: int = Field(default=50_000, ge=1)  # big batches: fewer, larger inserts
    batch_seconds: float = Field(default=1.0, gt=0)

    # Pairing
    page_view_max_wait_seconds: float = Field(default=12 * 3600, gt=0)  # then paired=false
    half_ttl_grace_seconds: float = Field(default=3600, ge=0)  # Redis TTL = max_wait + grace
    done_ttl_seconds: float | None = Field(default=None, gt=0)  # tombstone; None = max_wait
    sweep_interval_seconds: float = Field(default=60, gt=0)
    sweep_limit: int = Field(default=10000, ge=1)
    dedup_window_seconds: int = Field(default=7 * 24 * 3600, gt=0)  # event_id claims live this long
    redis_prefix: str = "pv:"  # keys: {prefix}{page_view_id}.{user_id}, {prefix}pending, ...

    def trigger(self) -> BatchTrigger:
        if self.schedule_seconds:
            return BatchTrigger(max_records=None, max_seconds=self.schedule_seconds)
        return BatchTrigger(max_records=self.batch_records, max_seconds=self.batch_seconds)

    @property
    def half_ttl_seconds(self) -> int:
        return int(self.page_view_max_wait_seconds + self.half_ttl_grace_seconds) + 1

    @property
    def tombstone_ttl_seconds(self) -> int:
        return int(self.done_ttl_seconds or self.page_view_max_wait_seconds) + 1
