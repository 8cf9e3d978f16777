"""Page-view pairing through the real broker, Redis and chDB: order, batches, restarts,
duplicates, orphans, and crashes at every step of a chunk."""

from __future__ import annotations

import random
import time
import uuid

import pytest

from clickflow.config import Settings
from clickflow.domains.ugc import metrics
from clickflow.domains.ugc.pairing import Half
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.kafka.batch import BatchTrigger
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

from .support import (
    BASE_TS,
    Tracking,
    expected_page_views,
    half,
    log_order,
    page_views,
    produce,
    record,
    run_pipeline,
    ugc_config,
)

SMALL = BatchTrigger(max_records=3, max_seconds=0.2)
FAR_FUTURE_MS = int(time.time() * 1000) + 10 * 86_400_000


@pytest.fixture
def rsettings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url, "kafka_session_timeout_ms": 3000})
    migrate_clickhouse(s, ["ugc"])
    return s


def test_pairs_in_any_order_across_batches_restarts_and_duplicates(
    rsettings: Settings, topic: str
) -> None:
    u = [f"user-{i}" for i in range(8)]
    pv = {name: str(uuid.uuid4()) for name in "ABCDEFGH"}
    t = BASE_TS
    dup_start_e = half("start", u[4], pv["E"], t + 10, "category", eid="e-start-1")
    part1 = [
        half("start", u[0], pv["A"], t, "movie"),  # A: in order
        half("end", u[0], pv["A"], t + 5_000, "movie"),
        half("end", u[1], pv["B"], t + 9_000, "promotion"),  # B: end overtakes its start
        record("element_click", u[1], {"element_type": "trailer", "page_type": "movie"}, t),
        half("start", u[1], pv["B"], t + 1_000, "promotion"),
        half("start", u[2], pv["C"], t + 2_000, "main"),  # C: end after the restart
        half("end", u[3], pv["D"], t + 4_000, "search"),  # D: start after the restart
        dup_start_e,  # E: duplicated halves, the first of each wins
        dup_start_e,  # exact re-send
        half("start", u[4], pv["E"], t + 20, "category", eid="e-start-2"),  # client retry
        half("end", u[4], pv["E"], t + 3_010, "category"),
        half("end", u[4], pv["E"], t + 3_999, "category"),
        half("start", u[5], pv["F"], t + 100, "movie"),  # F: never ends
        half("end", u[6], pv["G"], t + 100, "movie"),  # G: never starts
        b"{not json",
        record("page_scroll", u[7], {"x": 1}, t),
        half("start", u[7], "", t),  # empty page_view_id
    ]
    counters = (metrics.PAIRS, metrics.ORPHANS, metrics.ORPHAN_ENDS, metrics.LATE_ENDS)
    before = [c._value.get() for c in counters]
    handler = Tracking(UgcHandler(rsettings, ugc_config(topic), background_sweep=False))
    last = produce(rsettings, topic, part1)
    run_pipeline(rsettings, handler, lambda: handler.reached(last), SMALL, f"g-{topic}")
    assert len(handler.letters) == 3
    assert all(lt.reason for lt in handler.letters)
    assert len(page_views(rsettings)) == 3  # A, B, E

    # Restart (a new handler and consumer of the same group): the other halves come now.
    part2 = [
        half("end", u[2], pv["C"], t + 62_000, "main"),
        half("start", u[3], pv["D"], t + 3_000, "search"),
        half("end", u[4], pv["E"], t + 5_000, "category"),  # late duplicate after pairing
        half("start", u[0], pv["A"], t, "movie"),  # late duplicate of a paired start
    ]
    handler2 = Tracking(UgcHandler(rsettings, handler.inner.config, background_sweep=False))
    last = produce(rsettings, topic, part2)
    dups_before = metrics.DUPLICATES.labels("page_view")._value.get()
    run_pipeline(rsettings, handler2, lambda: handler2.reached(last), SMALL, f"g-{topic}")
    assert metrics.DUPLICATES.labels("page_view")._value.get() - dups_before == 2
    assert page_views(rsettings) == expected_page_views(part1 + part2, orphans=False)

    # Nothing expires before its time; after it, F is emitted unpaired, G is dropped.
    assert handler2.inner.sweep() == 0
    assert handler2.inner.sweep(now_ms=FAR_FUTURE_MS) == 1
    assert handler2.inner.sweep(now_ms=FAR_FUTURE_MS) == 0
    expected = expected_page_views(part1 + part2)
    assert page_views(rsettings) == expected
    assert [r for r in expected if r[1] == pv["F"]] == [
        (u[5], pv["F"], "movie", t + 100, None, None, 0)
    ]
    # An end after its start was swept, or a start re-sent, does not make a second page
    # view. This end reached Kafka well within the wait of its start (the sweep was forced
    # ahead of the Kafka clock), so it still pairs: the paired row replaces the unpaired one.
    part3 = [half("end", u[5], pv["F"], t + 99_000), half("start", u[5], pv["F"], t + 100)]
    handler3 = Tracking(UgcHandler(rsettings, handler.inner.config, background_sweep=False))
    last = produce(rsettings, topic, part3)
    run_pipeline(rsettings, handler3, lambda: handler3.reached(last), SMALL, f"g-{topic}")
    assert page_views(rsettings) == expected_page_views(part1 + part2 + part3)
    assert [r for r in page_views(rsettings) if r[1] == pv["F"]] == [
        (u[5], pv["F"], "movie", t + 100, t + 99_000, 98.9, 1)
    ]
    errors = clickhouse_client(rsettings).query("SELECT count() FROM ugc_processing_errors")
    assert errors.result_rows[0][0] == 3
    # Metrics: pairs made (A B E, then C D, then F), orphans expired (F), ends never started
    # (G), late ends (none), and the share of page views without an end.
    assert [c._value.get() - b for c, b in zip(counters, before, strict=True)] == [6, 1, 1, 0]
    pairs, orphans = metrics.PAIRS._value.get(), metrics.ORPHANS._value.get()
    assert metrics.UNENDED_SHARE._value.get() == pytest.approx(orphans / (pairs + orphans))


def test_operation_mode_is_chosen_by_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from clickflow.domains.ugc.config import UgcConfig

    assert UgcConfig().trigger() == BatchTrigger(
        max_records=50_000, max_seconds=1.0, sparse_records=200, sparse_seconds=3.0
    )
    monkeypatch.setenv("CLICKFLOW_UGC_SCHEDULE_SECONDS", "30")
    assert UgcConfig().trigger() == BatchTrigger(max_records=None, max_seconds=30.0)


def test_interrupted_orphan_sweep_is_redone_with_the_same_rows(rsettings: Settings) -> None:
    crash = {"sweep_insert": 1}

    def fault(point: str) -> None:
        if crash.get(point, 0) > 0:
            crash[point] -= 1
            raise ConnectionError(f"simulated crash at {point}")

    handler = UgcHandler(rsettings, ugc_config("unused"), background_sweep=False, fault=fault)
    halves = [
        Half("s", f"e{i}", f"u{i}", f"pv{i}", BASE_TS + i, "movie", BASE_TS + i) for i in range(5)
    ] + [Half("e", "e-end", "u0", "pv0", BASE_TS + 700, "movie", BASE_TS + 700)]
    plan = handler.pairing.plan(halves, 0, BASE_TS + 700, 5)
    assert len(plan.rows) == 1  # pv0 paired within the chunk
    handler._insert("ugc_page_view", plan.rows, "chunk-1")
    handler.pairing.apply(plan)
    with pytest.raises(ConnectionError):
        handler.sweep(now_ms=FAR_FUTURE_MS)
    # The intent and tombstones are recorded: an end 13 h after its start is late, the redo
    # emits the same rows.
    late = handler.pairing.plan(
        [Half("e", "late", "u1", "pv1", BASE_TS + 9, "movie", BASE_TS + 13 * 3_600_000)],
        0,
        BASE_TS + 13 * 3_600_000,
        6,
    )
    assert late.rows == [] and late.late == 1
    assert handler.sweep(now_ms=FAR_FUTURE_MS) == 4
    rows = page_views(rsettings)
    assert [(r[0], r[6]) for r in rows] == [("u0", 1), ("u1", 0), ("u2", 0), ("u3", 0), ("u4", 0)]
    assert handler.pairing.pending_count() == 0


def test_crashes_at_every_step_neither_lose_nor_duplicate_page_views(
    rsettings: Settings, topic: str
) -> None:
    """Random traffic (pairs split across batches, ends first, missing ends, retries, exact
    re-sends, broken records); the handler fails after the ClickHouse insert or after the
    Redis update at random, the framework replays the same chunks, and the pipeline is
    restarted half-way. The page views must be exactly the independent truth."""
    factory = UgcEventFactory(users=300, max_end_delay=60, topic=topic, seed=3)
    rng = random.Random(5)
    values: list[bytes] = []
    broken_values: set[bytes] = set()
    for _ in range(2000):
        if rng.random() < 0.03:
            kind = rng.choice(factory.breakages)
            values.append(factory.broken(rng, BASE_TS / 1000, kind).value)
            broken_values.add(values[-1])
        elif values and rng.random() < 0.03:
            values.append(rng.choice(values))  # exact re-send, like the generator's duplicates
        else:
            values.append(factory.valid(rng, BASE_TS / 1000 + len(values)).value)
    values += [e.value for e in factory.pending()]
    crashes = {"n": 0}
    frng = random.Random(9)

    def fault(point: str) -> None:
        if frng.random() < 0.2:
            crashes["n"] += 1
            raise ConnectionError(f"simulated crash at {point}")

    config = ugc_config(topic)
    trigger = BatchTrigger(max_records=200, max_seconds=0.2)
    half_way = len(values) // 2
    h1 = Tracking(UgcHandler(rsettings, config, background_sweep=False, fault=fault))
    last1 = produce(rsettings, topic, values[:half_way])
    run_pipeline(rsettings, h1, lambda: h1.reached(last1), trigger, f"g-{topic}", timeout=60)
    h2 = Tracking(UgcHandler(rsettings, config, background_sweep=False, fault=fault))
    last = produce(rsettings, topic, values[half_way:])
    run_pipeline(rsettings, h2, lambda: h2.reached(last), trigger, f"g-{topic}", timeout=60)
    assert crashes["n"] > 5
    last = {p: max(o, last1.get(p, -1)) for p, o in last.items()} | {
        p: o for p, o in last1.items() if p not in last
    }
    values = log_order(rsettings, topic, last)  # the truth in the order the pipeline saw
    assert page_views(rsettings) == expected_page_views(values, orphans=False)
    for _ in range(50):  # the sweep crashes at random too: the next one redoes its intent
        try:
            h2.inner.sweep(now_ms=FAR_FUTURE_MS)
            break
        except ConnectionError:
            continue
    assert page_views(rsettings) == expected_page_views(values)
    broken = sum(v in broken_values for v in values)
    ch = clickhouse_client(rsettings)
    assert ch.query("SELECT count() FROM ugc_processing_errors").result_rows[0][0] == broken
    assert len(h1.letters) + len(h2.letters) == broken
