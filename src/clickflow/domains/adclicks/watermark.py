"""Event-time watermarks: per Kafka partition, persisted so the API can say what is final.

A partition's watermark is the largest click time it has delivered minus the allowed
lateness, but never later than processing time minus the allowed lateness (clicks may be
stamped up to ``max_future_s`` ahead; they must not make minutes final that still receive
clicks). A minute [m, m+1) is *final* once the smallest watermark over all partitions of
the topic is at or past m+1: every partition has moved on, so only events later than the
allowed lateness can still change it (they are counted as late and still corrected).
A partition that has never reported holds finality back: being conservative is the point.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from clickhouse_connect.driver.client import Client

MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Finality:
    watermark_ms: int | None  # min over partitions, None until all partitions reported
    partitions_reported: int
    partitions: int

    @property
    def final_through_ms(self) -> int | None:
        """Start of the last minute that is final, or None."""
        if self.watermark_ms is None:
            return None
        return self.watermark_ms // MINUTE_MS * MINUTE_MS - MINUTE_MS


def read_finality(
    client: Client, topic: str, partitions: int, ceiling_ms: int | None = None
) -> Finality:
    """The persisted watermarks; with ``ceiling_ms`` (processing time - allowed lateness),
    never past it."""
    rows = client.query(
        "SELECT kafka_partition, max(watermark_ms), max(partitions) FROM ad_clicks_watermarks "
        "WHERE topic = {topic:String} GROUP BY kafka_partition",
        parameters={"topic": topic},
    ).result_rows
    expected = max([partitions] + [int(r[2]) for r in rows])
    marks = {int(p): int(w) for p, w, _ in rows if int(p) < expected}
    wm = min(marks.values()) if len(marks) == expected else None
    if wm is not None and ceiling_ms is not None:
        wm = min(wm, ceiling_ms)
    return Finality(wm, len(marks), expected)


def load_partition_maxima(client: Client, topic: str) -> dict[int, int]:
    """partition -> the largest click time it has delivered so far (persisted)."""
    rows = client.query(
        "SELECT kafka_partition, max(max_event_ms) FROM ad_clicks_watermarks "
        "WHERE topic = {topic:String} GROUP BY kafka_partition",
        parameters={"topic": topic},
    ).result_rows
    return {int(p): int(mx) for p, mx in rows}


def save_watermarks(
    client: Client, topic: str, partitions: int, marks: dict[int, tuple[int, int]], now_ms: int
) -> None:
    """``marks``: partition -> (max event ms, watermark ms). Idempotent (max).

    A raw JSON insert: ``client.insert`` builds a Native block in Python, asks the server
    for the table's columns first, and imports pandas on its first call (~1 s)."""
    if not marks:
        return
    rows = [orjson.dumps([topic, p, partitions, mx, wm, now_ms]) for p, (mx, wm) in marks.items()]
    client.raw_insert(
        "ad_clicks_watermarks",
        ["topic", "kafka_partition", "partitions", "max_event_ms", "watermark_ms", "updated_ms"],
        b"\n".join(rows),
        fmt="JSONCompactEachRow",
    )
