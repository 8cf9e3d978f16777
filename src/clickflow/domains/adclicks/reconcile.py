"""Recalculation from the raw store: compare the minute aggregate with what the raw clicks
say, and (optionally) write corrections so they agree.

The raw store is the source of truth: one row per click, and if a copy of a click slipped
past the online dedup (further apart than its window) it is counted once here
(``LIMIT 1 BY click_id``). Corrections are signed rows in the SummingMergeTree: one insert,
no window in which readers see a half-rebuilt range, and running it again is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from clickhouse_connect.driver.client import Client

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


def reconcile(client: Client, start: datetime, end: datetime, apply: bool) -> Reconciliation:
    # One name per type: clickhouse-connect renders a DateTime64 value with a fraction.
    params = {"start": start, "end": end, "start64": start, "end64": end}
    raw_rows, raw_clicks = client.query(TOTALS_SQL, parameters=params).result_rows[0]
    diffs = [Difference(*row) for row in client.query(DIFF_SQL, parameters=params).result_rows]
    result = Reconciliation(start, end, int(raw_rows), int(raw_clicks), diffs)
    if apply and diffs:
        client.insert(
            "ad_clicks_minute",
            [[d.minute, d.ad_id, d.country, d.device, d.os, d.delta] for d in diffs],
            column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
        )
        result.applied = True
    return result
