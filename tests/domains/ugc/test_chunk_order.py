"""A batch's chunks are prepared ahead of their writes (the next chunk is decoded, claimed
and planned while the current one is inserted): the result must be that of writing them one
after the other. Real Redis and chDB; the chunks are cut by hand, as a replay cuts them."""

from __future__ import annotations

import uuid

import pytest

from clickflow.config import Settings
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.kafka.batch import Batch, Chunk
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

from .support import BASE_TS, Msg, half, page_views, record, ugc_config

CLICK = {"element_type": "trailer", "page_type": "movie"}


def chunk(topic: str, partition: int, first: int, values: list[bytes]) -> Chunk:
    msgs = [Msg(topic, partition, first + i, v) for i, v in enumerate(values)]
    return Chunk(topic, partition, first, first + len(values) - 1, msgs)  # type: ignore[arg-type]


@pytest.fixture
def rsettings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(s, ["ugc"])
    return s


def clicks(settings: Settings) -> list[str]:
    sql = "SELECT user_id FROM ugc_element_click FINAL ORDER BY user_id"
    return [r[0] for r in clickhouse_client(settings).query(sql).result_rows]


def test_a_chunk_of_the_same_partition_sees_the_previous_chunks_write(
    rsettings: Settings,
) -> None:
    """Partitions 1, 0, 0: the second chunk of partition 0 holds the end of a page view
    whose start is in the chunk just before it, so it must be planned after that chunk's
    Redis update (planned ahead, it would find no start and store the end as waiting)."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    pv, other = str(uuid.uuid4()), str(uuid.uuid4())
    handler = UgcHandler(rsettings, ugc_config(topic), background_sweep=False)
    try:
        batch = Batch(
            "g",
            [
                chunk(topic, 1, 0, [half("start", "bob", other, BASE_TS)]),
                # A click, so that this chunk's write has an insert to wait for.
                chunk(
                    topic,
                    0,
                    0,
                    [
                        record("element_click", "alice", CLICK, BASE_TS),
                        half("start", "alice", pv, BASE_TS),
                    ],
                ),
                chunk(topic, 0, 2, [half("end", "alice", pv, BASE_TS + 5_000)]),
            ],
        )
        assert handler.handle(batch) == []
        assert page_views(rsettings) == [("alice", pv, "movie", BASE_TS, BASE_TS + 5_000, 5.0, 1)]
        assert handler.pairing.pending_count() == 1  # bob's start waits
    finally:
        handler.close()


def test_a_failed_write_leaves_the_chunks_after_it_unwritten_and_a_retry_writes_once(
    rsettings: Settings,
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    crash = {"after_insert": 1}

    def fault(point: str) -> None:
        if crash.get(point, 0) > 0:
            crash[point] -= 1
            raise ConnectionError(f"simulated crash at {point}")

    pv = str(uuid.uuid4())
    handler = UgcHandler(rsettings, ugc_config(topic), background_sweep=False, fault=fault)
    try:
        batch = Batch(
            "g",
            [
                chunk(topic, 0, 0, [record("element_click", "alice", CLICK, BASE_TS)]),
                chunk(
                    topic,
                    1,
                    0,
                    [
                        record("element_click", "bob", CLICK, BASE_TS),
                        half("start", "bob", pv, BASE_TS),
                        half("end", "bob", pv, BASE_TS + 1_000),
                    ],
                ),
            ],
        )
        with pytest.raises(ConnectionError):
            handler.handle(batch)
        # The first chunk was inserted (then the crash); the second, prepared meanwhile
        # (its click claimed, its page view planned), wrote nothing.
        assert clicks(rsettings) == ["alice"]
        assert page_views(rsettings) == []
        assert handler.pairing.clocks() == {}
        # The retry: every event once, the prepared-ahead claim is found as its own.
        assert handler.handle(batch) == []
        assert clicks(rsettings) == ["alice", "bob"]
        assert page_views(rsettings) == [("bob", pv, "movie", BASE_TS, BASE_TS + 1_000, 1.0, 1)]
    finally:
        handler.close()
