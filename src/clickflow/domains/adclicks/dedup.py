"""Deduplication by click_id: a bounded in-memory cache, reloaded from the raw store.

The topic is keyed by click_id, so every copy of a click (producer retries, the generator
re-sending a record) lands on the partition of the original and is seen by one consumer,
in order: no race between consumer processes. The cache is shared by all partitions of the
process, so copies spread by a round-robin partitioner are caught too as long as one
process owns those partitions (the embedded default).

The cache maps each recent click_id to where it was first seen (partition, offset). When a
partition is new to the process or its offsets jump (start, crash, rebalance), the last
``window`` clicks of *every* partition are reloaded from ``ad_clicks_raw``, including the
ones written ahead of the committed offset just before a crash. A copy from elsewhere of a
click_id found there is a *duplicate* and dropped. The very same record read again is a
*replay*: if its chunk is one the exactly-once intent log recorded, it is written again
with that chunk's token (ClickHouse drops the repeat per table, and fills the view if the
crash fell between the raw part and the view's part); otherwise (at-least-once delivery,
another consumer group re-reading the topic) it is dropped, so each click counts once.

Copies further apart than the window are not caught online; ``clickflow adclicks backfill``
counts distinct click_ids from the raw store and reports / corrects the difference.
"""

from __future__ import annotations

from collections import deque

from clickhouse_connect.driver.client import Client

_OFFSET_BITS = 40


def origin(partition: int, offset: int) -> int:
    return partition << _OFFSET_BITS | offset


class SeenClicks:
    """click_id -> origin for the last ``window`` clicks of each partition.

    One dict for lookups (a copy may come from any partition); one FIFO per partition for
    eviction, so a partition that is consumed slowly keeps its window however busy the
    others are."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._origin: dict[str, int] = {}
        self._order: dict[int, deque[str]] = {}

    def get(self, click_id: str) -> int | None:
        return self._origin.get(click_id)

    def __len__(self) -> int:
        return len(self._origin)

    def add(self, items: dict[str, int]) -> None:
        """Add click_id -> origin entries, oldest first; known click_ids are left as they are."""
        known = self._origin
        new = [(cid, o) for cid, o in items.items() if cid not in known]
        if not new:
            return
        known.update(new)
        by_partition: dict[int, list[str]] = {}
        for cid, o in new:
            by_partition.setdefault(o >> _OFFSET_BITS, []).append(cid)
        for p, cids in by_partition.items():
            order = self._order.get(p)
            if order is None:
                order = self._order[p] = deque()
            order.extend(cids)
            for _ in range(len(order) - self._window):
                del known[order.popleft()]


RECENT_SQL = """
SELECT click_id, kafka_partition, kafka_offset FROM ad_clicks_raw
WHERE ingest_ms >= {since:Int64} /*partitions*/
ORDER BY kafka_offset DESC
LIMIT {window:UInt64} BY kafka_partition
"""


def load_recent(
    client: Client, since_ms: int, window: int, partitions: list[int] | None = None
) -> dict[str, int]:
    """The last ``window`` clicks of each partition (or of ``partitions``) written since
    ``since_ms`` (Kafka time), oldest first, as click_id -> origin."""
    params: dict = {"since": since_ms, "window": window}
    sql = RECENT_SQL.replace("/*partitions*/", "")
    if partitions is not None:
        params["ps"] = partitions
        sql = RECENT_SQL.replace("/*partitions*/", "AND kafka_partition IN {ps:Array(UInt16)}")
    rows = client.query(sql, parameters=params).result_rows
    rows.sort(key=lambda r: r[2])
    return {cid: origin(int(p), int(o)) for cid, p, o in rows}
