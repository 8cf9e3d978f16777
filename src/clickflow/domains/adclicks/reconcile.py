"""Recalculation from the raw store: compare the minute aggregate with what the raw clicks
say, and (optionally) write corrections so they agree. Safe beside live writes.

The raw store is the source of truth: one row per click, and if a copy of a click slipped
past the online dedup it is counted once here (``LIMIT 1 BY click_id``). Corrections are
signed rows in the SummingMergeTree: one insert, no window in which readers see a
half-rebuilt range, and running it again is a no-op.

Live writes. A pipeline insert writes the raw part, then the view's part in the minute
aggregate; a reader can see the first without the second. A diff taken in between would
store a wrong correction for ever. So the diff is bounded by the consumer group's
*committed* offsets, which the framework commits only after both parts are written:

1. read the group's committed offset per partition;
2. read the raw side; a bucket holding any click at or past its partition's committed
   offset is *open* (its insert may be in flight);
3. read the minute aggregate;
4. read the raw side again;

and only buckets closed in both raw reads, with the same count in both, are compared. An
insert whose view part is in the aggregate read (3) has its raw part committed before it
(ClickHouse writes the source table's part, then the view's), so it is in read (4), and,
unless its batch was committed, its bucket is open. Open and changing buckets are left to
the next run (``clickflow_adclicks_reconcile_unstable``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from clickflow.config import Settings
from clickflow.domains.adclicks.config import AdClicksConfig

Bucket = tuple[datetime, str, str, str, str]  # minute, ad_id, country, device, os

# Per bucket: distinct clicks, and whether any click sits at or past its partition's bound
# (the committed offset; a partition without one has bound 0: everything is open).
RAW_SQL = """
SELECT toStartOfMinute(click_time) AS minute, ad_id, country, device, os,
       toInt64(count()) AS truth, max(open) AS open
FROM
(
    SELECT click_time, ad_id, country, device, os,
           kafka_offset >= arrayElement(
               {bounds:Array(UInt64)}, indexOf({ps:Array(UInt16)}, kafka_partition)
           ) AS open
    FROM ad_clicks_raw
    WHERE click_time >= {start64:DateTime64(3, 'UTC')}
      AND click_time < {end64:DateTime64(3, 'UTC')}
    LIMIT 1 BY click_id
)
GROUP BY minute, ad_id, country, device, os
"""

MINUTE_SQL = """
SELECT minute, ad_id, country, device, os, sum(clicks) AS stored FROM ad_clicks_minute
WHERE minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}
GROUP BY minute, ad_id, country, device, os
"""

# The whole diff in one query, for a quiet store (tests, a stopped pipeline).
DIFF_SQL = """
SELECT minute, ad_id, country, device, os, truth, stored
FROM
(
    SELECT toStartOfMinute(click_time) AS minute, ad_id, country, device, os,
           toInt64(count()) AS truth
    FROM
    (
        SELECT click_time, ad_id, country, device, os FROM ad_clicks_raw
        WHERE click_time >= {start64:DateTime64(3, 'UTC')}
          AND click_time < {end64:DateTime64(3, 'UTC')}
        LIMIT 1 BY click_id
    )
    GROUP BY minute, ad_id, country, device, os
) AS r
FULL OUTER JOIN
(
    SELECT minute, ad_id, country, device, os, sum(clicks) AS stored FROM ad_clicks_minute
    WHERE minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}
    GROUP BY minute, ad_id, country, device, os
) AS a
USING (minute, ad_id, country, device, os)
WHERE truth != stored
ORDER BY minute, ad_id, country, device, os
SETTINGS join_use_nulls = 0
"""

TOTALS_SQL = """
SELECT count(), uniqExact(click_id) FROM ad_clicks_raw
WHERE click_time >= {start64:DateTime64(3, 'UTC')} AND click_time < {end64:DateTime64(3, 'UTC')}
"""


@dataclass
class Difference:
    minute: datetime
    ad_id: str
    country: str
    device: str
    os: str
    truth: int
    stored: int

    @property
    def delta(self) -> int:
        return self.truth - self.stored


@dataclass
class Reconciliation:
    start: datetime
    end: datetime
    raw_rows: int
    raw_clicks: int  # distinct click_ids
    differences: list[Difference] = field(default_factory=list)
    applied: bool = False
    unstable: int = 0  # buckets left to the next run: open, or changed between the reads

    @property
    def raw_duplicates(self) -> int:
        return self.raw_rows - self.raw_clicks

    def as_dict(self, limit: int = 50) -> dict:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "raw_rows": self.raw_rows,
            "raw_clicks": self.raw_clicks,
            "raw_duplicates": self.raw_duplicates,
            "differences": len(self.differences),
            "unstable": self.unstable,
            "clicks_off": sum(abs(d.delta) for d in self.differences),
            "applied": self.applied,
            "sample": [
                {
                    "minute": d.minute.isoformat(),
                    "ad_id": d.ad_id,
                    "country": d.country,
                    "device": d.device,
                    "os": d.os,
                    "truth": d.truth,
                    "stored": d.stored,
                }
                for d in self.differences[:limit]
            ],
        }


def _raw(client: Client, params: dict) -> dict[Bucket, tuple[int, bool]]:
    rows = client.query(RAW_SQL, parameters=params).result_rows
    return {tuple(r[:5]): (int(r[5]), bool(r[6])) for r in rows}  # type: ignore[misc]


def reconcile(
    client: Client,
    start: datetime,
    end: datetime,
    apply: bool,
    committed: Callable[[], dict[int, int]] | None = None,
    between: Callable[[], None] | None = None,
) -> Reconciliation:
    """Compare [start, end) and, with ``apply``, correct the aggregate.

    ``committed`` returns the pipeline group's committed offset per partition: given, only
    buckets whose clicks are all below them (in both raw reads) are compared, which is safe
    beside live writes. Without it the store is assumed quiet (one query).
    ``between`` runs between the reads (tests put a live write there)."""
    # One name per type: clickhouse-connect renders a DateTime64 value with a fraction.
    params: dict = {"start": start, "end": end, "start64": start, "end64": end}
    raw_rows, raw_clicks = client.query(TOTALS_SQL, parameters=params).result_rows[0]
    unstable = 0
    if committed is None:
        rows = client.query(DIFF_SQL, parameters=params).result_rows
        diffs = [Difference(*row) for row in rows]
    else:
        bounds = committed()
        params["ps"] = list(bounds)
        params["bounds"] = [bounds[p] for p in bounds]
        before = _raw(client, params)
        if between is not None:
            between()
        stored = {
            tuple(r[:5]): int(r[5]) for r in client.query(MINUTE_SQL, parameters=params).result_rows
        }
        if between is not None:
            between()
        after = _raw(client, params)
        diffs = []
        for key in sorted(before.keys() | stored.keys() | after.keys()):
            (t1, open1), (t2, open2) = before.get(key, (0, False)), after.get(key, (0, False))
            if open1 or open2 or t1 != t2:
                unstable += 1
                continue
            if t2 != stored.get(key, 0):
                diffs.append(Difference(*key, truth=t2, stored=stored.get(key, 0)))
    result = Reconciliation(start, end, int(raw_rows), int(raw_clicks), diffs, unstable=unstable)
    if apply and diffs:
        client.insert(
            "ad_clicks_minute",
            [[d.minute, d.ad_id, d.country, d.device, d.os, d.delta] for d in diffs],
            column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
        )
        result.applied = True
    return result


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The group's committed offset per partition (partitions without one are left out)."""
    from confluent_kafka import Consumer, TopicPartition

    from clickflow.kafka.config import consumer_config

    consumer = Consumer(consumer_config(settings, group))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps if tp.error is None and tp.offset >= 0}


def observe(result: Reconciliation) -> None:
    """Report a run as metrics (served by the process running the schedule)."""
    from clickflow.domains.adclicks import metrics

    metrics.RECONCILE_RUNS.inc()
    metrics.RECONCILE_DIFFERENCES.set(len(result.differences))
    metrics.RECONCILE_CLICKS_OFF.set(sum(abs(d.delta) for d in result.differences))
    metrics.RECONCILE_UNSTABLE.set(result.unstable)
    if result.applied:
        metrics.RECONCILE_CORRECTED.inc(sum(abs(d.delta) for d in result.differences))
    metrics.RECONCILE_LAST.set(time.time())


def scheduled_run(
    settings: Settings, config: AdClicksConfig, group: str, lookback_s: float, apply: bool
) -> Reconciliation:
    """One run of the schedule: the last ``lookback_s`` up to the current minute."""
    from clickflow.stores.clickhouse import clickhouse_client

    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(seconds=lookback_s)
    result = reconcile(
        clickhouse_client(settings),
        start,
        end,
        apply,
        committed=lambda: committed_offsets(settings, group, config.topic, config.partitions),
    )
    observe(result)
    return result
