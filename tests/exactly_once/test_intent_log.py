"""The ClickHouse intent log on real chDB: owner epochs, the fence, overlaps resolved the same
way by every reader, and records that live until their range is committed."""

from __future__ import annotations

import threading

import pytest

from clickflow.config import Settings
from clickflow.exactly_once.intent_log import ClickHouseIntentLog, resolve_overlaps
from clickflow.kafka.batch import BatchTrigger, Chunk, Delivery
from clickflow.kafka.exceptions import Fenced
from clickflow.stores.clickhouse import clickhouse_client
from tests.kafka.test_batch_consumer import TokenSink, make_consumer, produce, records, run_until

G, T = "clickflow-pageviews", "page_views"


def chunk(first: int, last: int, epoch: int, partition: int = 0) -> Chunk:
    return Chunk(T, partition, first, last, [], epoch)


@pytest.mark.parametrize("zombie_first", [True, False])
def test_overlapping_ranges_resolve_to_the_latest_owner_in_any_order(
    settings: Settings, zombie_first: bool
) -> None:
    """A (epoch 1) records 100-199 after B (epoch 2) read the log and recorded 100-349:
    every reader replays 100-349, never both (100-199 would be written under two tokens)."""
    log = ClickHouseIntentLog(settings)
    a, b = [chunk(100, 199, 1)], [chunk(100, 349, 2), chunk(350, 399, 2)]
    for chunks in (a, b) if zombie_first else (b, a):
        try:
            log.record(G, chunks)
        except Fenced:
            pass
    assert log.pending(G, T, 0, 100) == [(100, 349), (350, 399)]
    assert log.pending(G, T, 0, 360) == [(350, 399)]


def test_resolution_rules() -> None:
    # the same range recorded twice is one; the latest epoch wins; disjoint ranges all stay
    assert resolve_overlaps([(0, 9, 1), (0, 9, 2), (10, 19, 1)]) == [(0, 9), (10, 19)]
    assert resolve_overlaps([(0, 50, 1), (0, 9, 2), (10, 19, 2)]) == [(0, 9), (10, 19)]
    assert resolve_overlaps([(5, 20, 3), (0, 9, 2), (21, 30, 1)]) == [(5, 20), (21, 30)]


def test_a_zombie_is_fenced_once_a_later_owner_claimed_the_partition(settings: Settings) -> None:
    log = ClickHouseIntentLog(settings)
    old = log.claim(G, [(T, 0), (T, 1)], proposed=5)
    log.record(G, [chunk(0, 99, old), chunk(0, 99, old, partition=1)])
    # p0 moves to a new owner, whose clock is behind: its epoch still comes out above
    new = log.claim(G, [(T, 0)], proposed=1)
    assert new > old
    with pytest.raises(Fenced) as fenced:
        log.record(G, [chunk(100, 199, old), chunk(100, 199, old, partition=1)])
    assert fenced.value.partitions == {(T, 0)}
    log.record(G, [chunk(100, 199, new)])  # the owner is not fenced


def test_intents_live_until_their_range_is_committed(settings: Settings, topic: str) -> None:
    """A consumer records batches and crashes before committing them; it stays down for
    longer than the intent lifetime (scaled: the log's clock jumps 3 lifetimes) while the
    committed ranges expire. The restarted consumer, with another batch size, still replays
    the recorded ranges as the same chunks: nothing is written twice."""
    now = [1_800_000_000.0]
    log = ClickHouseIntentLog(settings, lifetime_s=3600, clock=lambda: now[0])
    sink = TokenSink(crash_after_write=3)
    first = make_consumer(
        settings,
        topic,
        sink,
        BatchTrigger(max_records=70, max_seconds=0.2),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=log,
        intent_prune_every_s=0,
    )
    produce(settings, topic, records(1000))
    t = threading.Thread(target=lambda: pytest.raises(SystemExit, first.run), daemon=True)
    t.start()
    t.join(60)
    assert 0 < len(sink.written) < 1000
    committed = dict(first._committed)
    ch = clickhouse_client(settings)
    uncommitted = ch.query(
        "SELECT partition, first_offset, last_offset FROM consumer_intents "
        "WHERE first_offset >= 0 ORDER BY ALL"
    ).result_rows
    uncommitted = [r for r in uncommitted if r[2] >= committed.get((topic, r[0]), 0)]
    assert uncommitted, "the crash left no recorded, uncommitted range"

    now[0] += 3 * 3600  # down for three lifetimes
    log.forget_committed(first.group, committed)
    ch.command("OPTIMIZE TABLE consumer_intents FINAL")  # would apply any TTL
    kept = ch.query(
        "SELECT partition, first_offset, last_offset FROM consumer_intents "
        "WHERE first_offset >= 0 ORDER BY ALL"
    ).result_rows
    for row in uncommitted:
        assert row in kept, f"uncommitted intent {row} expired"

    sink.crash_after_write = 0
    again = make_consumer(
        settings,
        topic,
        sink,
        BatchTrigger(max_records=333, max_seconds=0.2),
        group=f"g-{topic}",
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=log,
        intent_prune_every_s=0,
    )
    run_until(again, lambda: len(sink.written) >= 1000, timeout=60)
    assert sorted(sink.written) == list(range(1000))  # replayed identically: no duplicate

    # Once committed (and older than the lifetime), ranges expire.
    now[0] += 2 * 3600
    log.forget_committed(again.group, committed | again._committed)
    left = ch.command("SELECT count() FROM consumer_intents WHERE first_offset >= 0")
    assert left == 0


def test_record_rows_carry_the_epoch(settings: Settings) -> None:
    log = ClickHouseIntentLog(settings)
    log.record(G, [chunk(0, 9, 42)])
    rows = (
        clickhouse_client(settings)
        .query("SELECT first_offset, last_offset, epoch FROM consumer_intents")
        .result_rows
    )
    assert [tuple(r) for r in rows] == [(0, 9, 42)]
