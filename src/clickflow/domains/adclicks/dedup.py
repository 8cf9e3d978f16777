"""Deduplication by click_id: a bounded in-memory cache, reloaded from the raw store.

The topic is keyed by click_id, so every copy of a click (producer retries, the generator
re-sending a record) lands on the same partition and is seen by one consumer, in order:
no cross-process race. Within a process the cache is shared by all its partitions, so
copies spread by a round-robin partitioner are caught too as long as one process owns
those partitions.

The cache keeps about ``window`` click_ids per partition (generations of sets, the oldest
dropped whole). When a partition is (re)assigned, or its offsets jump, the click_ids of the
``window`` records before the chunk are reloaded from ``ad_clicks_raw`` (it stores the
partition and offset of each click). Copies further apart than the window are not caught
online; ``clickflow adclicks backfill`` counts distinct click_ids and reports them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from clickhouse_connect.driver.client import Client


class SeenClicks:
    def __init__(self, capacity: int, generations: int = 4) -> None:
        self._gen_size = max(1, capacity // generations)
        self._generations: deque[set[str]] = deque([set()], maxlen=generations)

    def __contains__(self, click_id: str) -> bool:
        for g in self._generations:
            if click_id in g:
                return True
        return False

    def __len__(self) -> int:
        return sum(len(g) for g in self._generations)

    def add_all(self, click_ids: Iterable[str]) -> None:
        current = self._generations[-1]
        for cid in click_ids:
            current.add(cid)
            if len(current) >= self._gen_size:
                current = set()
                self._generations.append(current)  # maxlen drops the oldest


def load_recent(client: Client, partition: int, before_offset: int, window: int) -> list[str]:
    """click_ids stored from ``partition`` in the ``window`` offsets before ``before_offset``."""
    if before_offset <= 0:
        return []
    rows = client.query(
        "SELECT click_id FROM ad_clicks_raw WHERE kafka_partition = {p:UInt16} "
        "AND kafka_offset >= {lo:UInt64} AND kafka_offset < {hi:UInt64}",
        parameters={"p": partition, "lo": max(0, before_offset - window), "hi": before_offset},
    ).result_rows
    return [r[0] for r in rows]
