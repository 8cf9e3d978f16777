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
    # Continuous mode, sparse traffic: a batch of fewer than sparse_records records waits for
    # more up to sparse_seconds after the last one (BatchTrigger): each batch costs up to six
    # inserts per partition whatever its size.
    sparse_records: int = Field(default=200, ge=1)
    sparse_seconds: float | None = Field(default=3.0, gt=0)
    # A chunk's tables (up to six) are inserted by this many threads side by side, each with
    # its own ClickHouse client (chDB releases the GIL); 1 = one after the other.
    insert_threads: int = Field(default=3, ge=1, le=6)

    # Pairing, on the Kafka clock (see clickflow.domains.ugc.pairing): a half waits this
    # long after it reached Kafka, measured by the timestamps of the records that follow it
    # on its partition; then a start is emitted with paired = 0 and an end is dropped.
    page_view_max_wait_seconds: float = Field(default=12 * 3600, gt=0)
    done_ttl_seconds: float | None = Field(default=None, gt=0)  # tombstone; None = max_wait
    sweep_interval_seconds: float = Field(default=60, gt=0)
    sweep_limit: int = Field(default=10000, ge=1)  # halves expired per chunk / per sweep round
    # An idle partition (nothing left to read) has no record to move its clock: the
    # background sweep moves it to the wall clock minus this margin (the producers' clock
    # skew), so a lone start is still emitted about max_wait after it was sent.
    idle_clock_margin_seconds: float = Field(default=60, ge=0)
    dedup_window_seconds: int = Field(default=7 * 24 * 3600, gt=0)  # event_id claims live this long
    # Every Redis key of the pipeline starts with this prefix, then one fixed namespace per
    # purpose: pv: (pairing state), pending:, ended:, clock, applied:, sweep (the sweep), seen:
    # (claims).
    redis_prefix: str = "ugc:"

    # Verdicts, from the record and the time it reached Kafka (never the processing clock,
    # so a replay reaches the same verdict): a timestamp this far after its Kafka time is
    # "in the future", one older than the tables' retention (TTL 365 days) "too old". The
    # collector stamps the time it received an event; the traffic generator, which writes
    # to Kafka itself, stamps a page view's end up to 10 min ahead of sending it.
    max_future_seconds: float = Field(default=3600, ge=0)
    retention_days: int = Field(default=365, ge=1)

    def trigger(self) -> BatchTrigger:
        if self.schedule_seconds:
            return BatchTrigger(max_records=None, max_seconds=self.schedule_seconds)
        if self.sparse_seconds and self.sparse_seconds > self.batch_seconds:
            return BatchTrigger(
                max_records=self.batch_records,
                max_seconds=self.batch_seconds,
                sparse_records=self.sparse_records,
                sparse_seconds=self.sparse_seconds,
            )
        return BatchTrigger(max_records=self.batch_records, max_seconds=self.batch_seconds)

    @property
    def max_wait_ms(self) -> int:
        return int(self.page_view_max_wait_seconds * 1000)

    @property
    def tombstone_ms(self) -> int:
        return int((self.done_ttl_seconds or self.page_view_max_wait_seconds) * 1000)
