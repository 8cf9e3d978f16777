"""The pairing clock and the orphan sweep against real Redis and chDB (issue 21, cases 1
and 2): halves wait on the Kafka clock with no wall-clock expiry, a crash between a paired
insert and its Redis update followed by a sweep, a sweep redone after the deduplication
window forgot its block, and a lease that only its owner deletes."""

from __future__ import annotations

import time

import pytest
import redis

from clickflow.config import Settings
from clickflow.domains.ugc.pairing import Half, PairingPlan
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

from .support import BASE_TS, page_views, ugc_config

H = 3_600_000
FAR_FUTURE_MS = int(time.time() * 1000) + 10 * 86_400_000


@pytest.fixture
def rsettings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(s, ["ugc"])
    return s


class Crash(Exception):
    pass


def faults(*points: str):
    todo = list(points)

    def fault(point: str) -> None:
        if todo and todo[0] == point:
            todo.pop(0)
            raise Crash(point)

    return fault


def h(kind: str, n: int, kafka_ts: int) -> Half:
    return Half(kind, f"{kind}{n}-{kafka_ts}", f"u{n}", f"pv{n}", kafka_ts, "movie", kafka_ts)


def chunk(handler: UgcHandler, halves: list[Half], clock: int, offset: int) -> PairingPlan:
    """One chunk through plan, insert and apply, as the handler runs it."""
    p = handler.pairing
    plan = p.plan(halves, 0, clock, offset)
    if plan.rows:
        handler._insert("ugc_page_view", plan.rows, f"chunk-{offset}")
    p.apply(plan)
    return plan


def raw_count(settings: Settings) -> int:
    return clickhouse_client(settings).query("SELECT count() FROM ugc_page_view").result_rows[0][0]


def test_halves_wait_on_the_kafka_clock_and_outlive_any_outage(rsettings: Settings) -> None:
    handler = UgcHandler(rsettings, ugc_config("unused"), background_sweep=False)
    r = redis.Redis.from_url(rsettings.redis_url)
    t = BASE_TS
    chunk(handler, [h("s", 1, t), h("s", 2, t), h("e", 3, t), h("s", 4, t)], t, 0)
    key = handler.pairing.key("u1", "pv1")
    assert r.ttl(key) == -1  # no wall-clock expiry: it waits whatever the outage
    # 11 h 59 min of Kafka time later nothing expired; an end 11 h after its start pairs.
    chunk(handler, [h("e", 1, t + 11 * H)], t + 12 * H - 60_000, 1)
    assert [(x[1], x[6]) for x in page_views(rsettings)] == [("pv1", 1)]
    # The clock passes 12 h: the lone start is emitted unpaired, the lone end dropped.
    plan = chunk(handler, [], t + 12 * H, 2)
    assert [(x[1], x[6]) for x in page_views(rsettings)] == [("pv1", 1), ("pv2", 0), ("pv4", 0)]
    assert (plan.orphans, plan.orphan_ends, plan.pairs) == (2, 1, 0)
    # An end stamped within 12 h of its start but read after the clock passed (a producer
    # with a slow clock) still pairs: the paired row replaces the unpaired one.
    chunk(handler, [h("e", 4, t + 12 * H - 1)], t + 12 * H + 5, 3)
    # An end 13 h after its start is late; a start 13 h after its end came alone.
    plan = chunk(handler, [h("e", 2, t + 13 * H), h("s", 3, t + 13 * H)], t + 13 * H, 4)
    assert (plan.late, plan.orphans) == (1, 1)
    rows = [(x[1], x[4] is not None, x[6]) for x in page_views(rsettings)]
    assert rows == [("pv1", True, 1), ("pv2", False, 0), ("pv3", False, 0), ("pv4", True, 1)]
    # The page views' tombstones go once the clock is 12 h past them, not before.
    chunk(handler, [], t + 23 * H, 5)
    assert r.exists(key) == 1
    chunk(handler, [], t + 24 * H, 6)
    assert r.exists(key) == 0


def test_crash_after_a_paired_insert_then_a_sweep_stores_one_page_view(
    rsettings: Settings,
) -> None:
    """The consumer inserts a paired row and dies before its Redis update; a sweep (another
    process, or the wall clock of an idle partition) runs before the replay and emits the
    start unpaired. The page view is still one row, paired."""
    handler = UgcHandler(rsettings, ugc_config("unused"), background_sweep=False)
    t = BASE_TS
    chunk(handler, [h("s", 1, t)], t, 0)
    plan = handler.pairing.plan([h("e", 1, t + H)], 0, t + H, 1)
    handler._insert("ugc_page_view", plan.rows, "chunk-1")
    # ... killed here: no apply.
    assert handler.sweep(now_ms=FAR_FUTURE_MS) == 1
    assert raw_count(rsettings) == 2
    replay = handler.pairing.plan([h("e", 1, t + H)], 0, t + H, 1)
    handler._insert("ugc_page_view", replay.rows, "chunk-1")
    handler.pairing.apply(replay)
    assert [(x[1], x[6]) for x in page_views(rsettings)] == [("pv1", 1)]


def test_a_sweep_redone_after_the_dedup_window_forgot_it_stores_each_page_view_once(
    rsettings: Settings,
) -> None:
    """The sweep inserts its rows and dies before clearing its intent; the redo comes so
    late that the table's deduplication window no longer knows the block (simulated: the
    redo's insert gets a token of its own)."""
    handler = UgcHandler(
        rsettings, ugc_config("unused"), background_sweep=False, fault=faults("sweep_inserted")
    )
    t = BASE_TS
    chunk(handler, [h("s", n, t) for n in range(5)], t, 0)
    with pytest.raises(Crash):
        handler.sweep(now_ms=FAR_FUTURE_MS)
    assert raw_count(rsettings) == 5
    insert = handler._insert
    tokens: list[str] = []

    def forgetful(table: str, rows: list[dict], token: str) -> None:
        tokens.append(token)
        insert(table, rows, f"{token}:forgotten")

    handler._insert = forgetful  # type: ignore[method-assign]
    handler.sweep(now_ms=FAR_FUTURE_MS)
    assert len(tokens) == 1 and tokens[0].startswith("ugc-orphans:")
    assert raw_count(rsettings) == 10
    assert [(x[1], x[6]) for x in page_views(rsettings)] == [(f"pv{n}", 0) for n in range(5)]
    assert handler.pairing.pending_count() == 0


def test_the_sweep_lease_is_deleted_only_by_its_owner(rsettings: Settings) -> None:
    """A sweep that outlived its lease must not delete the lease another sweeper took."""
    handler = UgcHandler(rsettings, ugc_config("unused"), background_sweep=False)
    t = BASE_TS
    chunk(handler, [h("s", 1, t)], t, 0)
    r = redis.Redis.from_url(rsettings.redis_url)
    lease = handler.pairing.lease_key
    insert = handler._insert

    def slow(table: str, rows: list[dict], token: str) -> None:
        r.set(lease, "another-sweeper")  # our lease expired; another process took it
        insert(table, rows, token)

    handler._insert = slow  # type: ignore[method-assign]
    assert handler.sweep(now_ms=FAR_FUTURE_MS) == 1
    assert r.get(lease) == b"another-sweeper"
    # While another process holds the lease, this one does not sweep.
    chunk(handler, [h("s", 2, t)], t, 1)
    assert handler.sweep(now_ms=FAR_FUTURE_MS) == 0
    r.delete(lease)
    assert handler.sweep(now_ms=FAR_FUTURE_MS) == 1
