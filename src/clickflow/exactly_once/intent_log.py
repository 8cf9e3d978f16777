"""The intent log: offset ranges recorded before they are written (exactly-once mode).

Each record carries the *epoch* of the partition's owner that wrote it. A consumer that is
assigned a partition claims a new epoch, above every epoch recorded for the partition (a
claim is a marker row, offsets -1). Two things follow:

* a consumer that lost a partition without noticing (a zombie: its session expired while it
  was writing) is fenced at its next record: the log holds a later owner's epoch for the
  partition, so :meth:`ClickHouseIntentLog.record` raises :class:`Fenced` and nothing of
  the batch is written for that partition;
* overlapping ranges (a zombie that recorded after the new owner read the log) are resolved
  the same way by every reader: the latest owner's ranges win, so no offset is replayed
  under two tokens.

Records live until their range is committed: :meth:`ClickHouseIntentLog.forget_committed`
deletes the ranges below a partition's committed offset once they are older than the
lifetime. A consumer stopped for longer than the lifetime with a recorded, uncommitted batch
still finds it, and replays it as the same chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from clickflow.config import Settings
from clickflow.kafka.batch import Chunk
from clickflow.kafka.exceptions import Fenced
from clickflow.stores.clickhouse import clickhouse_client

TP = tuple[str, int]

INTENTS_SQL = """
CREATE TABLE IF NOT EXISTS consumer_intents
(
    group_id String,
    topic String,
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    created DateTime DEFAULT now(),
    epoch Int64 DEFAULT 0
) ENGINE = MergeTree
ORDER BY (group_id, topic, partition, first_offset)
"""

# Tables created before epochs and commit-bound expiry: the column, and no expiry by age.
_UPGRADE_SQL = "ALTER TABLE consumer_intents ADD COLUMN IF NOT EXISTS epoch Int64 DEFAULT 0"
_COLUMNS = ["group_id", "topic", "partition", "first_offset", "last_offset", "created", "epoch"]

#: How long a committed range stays in the log (an uncommitted one stays until committed).
DEFAULT_LIFETIME_S = 7 * 24 * 3600


class ClickHouseIntentLog:
    """Exactly-once intent log kept in the same ClickHouse as the data it protects.

    ``lifetime_s`` and ``clock`` (Unix seconds) are injectable so tests can run a long
    outage in seconds."""

    def __init__(
        self,
        settings: Settings,
        database: str | None = None,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._database = database
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._cluster = settings.clickhouse_cluster
        if self._cluster:
            return  # created by the migrations (Replicated + Distributed), already epoch-aware
        client = self._client()
        client.command(INTENTS_SQL)
        client.command(_UPGRADE_SQL)
        if "TTL created" in str(client.command("SHOW CREATE TABLE consumer_intents")):
            client.command("ALTER TABLE consumer_intents REMOVE TTL")

    def _client(self):
        return clickhouse_client(self._settings, self._database)

    def claim(self, group: str, partitions: list[TP], proposed: int) -> int:
        epoch = max(proposed, max(self._epochs(group, partitions).values(), default=0) + 1)
        self._insert([[group, t, p, -1, -1, int(self.clock()), epoch] for t, p in partitions])
        return epoch

    def record(self, group: str, chunks: list[Chunk]) -> None:
        now = int(self.clock())
        self._insert(
            [
                [group, c.topic, c.partition, c.first_offset, c.last_offset, now, c.epoch]
                for c in chunks
            ]
        )
        # The fence: a later owner's epoch for one of the partitions means this consumer
        # lost it. (What is left: a new owner claiming between this check and the write.)
        mine = {(c.topic, c.partition): c.epoch for c in chunks}
        latest = self._epochs(group, list(mine))
        fenced = {tp for tp, epoch in mine.items() if latest.get(tp, epoch) > epoch}
        if fenced:
            raise Fenced(fenced)

    def _insert(self, rows: list[list]) -> None:
        if not rows:
            return
        # A raw JSON insert: half the time of client.insert (no Native block built in Python).
        self._client().raw_insert(
            "consumer_intents",
            _COLUMNS,
            b"\n".join(orjson.dumps(r) for r in rows),
            fmt="JSONCompactEachRow",
        )

    def _epochs(self, group: str, partitions: list[TP]) -> dict[TP, int]:
        if not partitions:
            return {}
        result = self._client().query(
            "SELECT topic, partition, max(epoch) FROM consumer_intents "
            "WHERE group_id = {g:String} "
            "AND (topic, partition) IN {tps:Array(Tuple(String, Int32))} "
            "GROUP BY topic, partition",
            parameters={"g": group, "tps": [tuple(tp) for tp in partitions]},
        )
        return {(t, int(p)): int(e) for t, p, e in result.result_rows}

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[tuple[int, int]]:
        result = self._client().query(
            "SELECT first_offset, last_offset, max(epoch) FROM consumer_intents "
            "WHERE group_id = {g:String} AND topic = {t:String} AND partition = {p:Int32} "
            "AND last_offset >= {o:Int64} AND first_offset >= 0 "
            "GROUP BY first_offset, last_offset",
            parameters={"g": group, "t": topic, "p": partition, "o": max(0, from_offset)},
        )
        return resolve_overlaps([(int(a), int(b), int(e)) for a, b, e in result.result_rows])

    def forget_committed(self, group: str, committed: dict[TP, int]) -> None:
        """Delete the ranges wholly below each partition's committed offset that are older
        than the lifetime (and old ownership claims)."""
        if not committed:
            return
        keys = list(committed)
        # On a cluster, rows are deleted in the replicated local tables, not through the
        # Distributed one (validated identifier: clickhouse_client checks the cluster name).
        table = (
            f"consumer_intents_local ON CLUSTER `{self._cluster}`"
            if self._cluster
            else "consumer_intents"
        )
        self._client().command(
            f"DELETE FROM {table} WHERE group_id = {{g:String}} "  # noqa: S608
            "AND created < {cutoff:Int64} AND last_offset < arrayElement({offsets:Array(Int64)}, "
            "indexOf({tps:Array(Tuple(String, Int32))}, (topic, partition)))",
            parameters={
                "g": group,
                "cutoff": int(self.clock() - self.lifetime_s),
                "offsets": [committed[tp] for tp in keys],
                "tps": [tuple(tp) for tp in keys],
            },
        )


def resolve_overlaps(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """``(first, last, epoch)`` records as a non-overlapping chain in offset order.

    The same range recorded twice (a replay records it again) is one range. Overlapping
    ranges come only from a fenced-off owner that recorded after its successor read the
    log: the latest epoch wins, then the lowest offsets, so every reader picks the same."""
    chosen: list[tuple[int, int]] = []
    for first, last, _epoch in sorted(ranges, key=lambda r: (-r[2], r[0], r[1])):
        if all(last < a or first > b for a, b in chosen):
            chosen.append((first, last))
    return sorted(chosen)
