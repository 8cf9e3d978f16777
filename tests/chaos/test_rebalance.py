"""Pipelines through partitions that move again and again, on real servers (tansu, chDB,
Redis): consumers of one group added, closed, stalled until the group evicts them (a zombie
that wakes up with a batch to write), and the sink failing for one of them during a move.
Every table must equal the ground truth: 0 lost, 0 duplicated (page views: raw table and
both rollups; ad clicks: raw table, minute buckets and the DLQ; UGC: its four event tables,
the paired page views, the processing errors and the DLQ).

The consumers are threads of this process sharing its chDB, as `clickflow serve
--consumers N` runs them."""

from __future__ import annotations

import calendar
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from clickflow.config import Settings
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import AdClicksHandler
from clickflow.domains.pageviews.events import event_identity
from clickflow.domains.pageviews.pipeline import pipeline_handler, stores_healthy
from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.pipeline import TABLES as UGC_TABLES
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.migrations import migrate_clickhouse
from clickflow.pipelines import stores_answer
from clickflow.stores.clickhouse import clickhouse_client
from tests.domains.adclicks.support import make_stream
from tests.domains.pageviews.support import ROLLUP_SQL, rows_to_comparable
from tests.domains.ugc.support import PAGE_VIEW_SQL, expected_by_kafka_time

from .harness import RESULTS, Report, Sender, check_dlq, committed, dlq_sources, read_topic

SESSION_MS = 3000
# max.poll.interval.ms of a consumer made to stall: librdkafka's heartbeat thread keeps a
# stalled consumer's session alive, and this is how long the group waits for it. Above the
# time a new consumer's first assignment can take here (each new thread connects to chDB,
# seconds on a loaded machine), or the group keeps evicting it while it joins.
EVICTED_AFTER_MS = 10_000


@dataclass(frozen=True)
class RebalanceProfile:
    name: str
    events: int
    rate: float
    cycles: int  # rounds of: add, sink failing during a close, stall past eviction


SHORT = RebalanceProfile("short", events=50_000, rate=4000, cycles=1)
LONG = RebalanceProfile("long", events=200_000, rate=3000, cycles=4)


class Faulty:
    """A pipeline's handler that can be made to fail (the sink is down for it) or to stall
    the consumer's thread (no poll: the group evicts it while it holds a batch).

    The sink fails before the handler writes anything, or with ``fails_at``, inside it at
    that point of the handler's fault hook (UGC: "after_insert", the chunk's rows stored
    and its pairing state not updated, a partial write the next owner must complete)."""

    def __init__(self, inner: Any, fails_at: str | None = None) -> None:
        self.inner = inner
        self.fails_at = fails_at
        self.fail_until = 0.0
        self.fail_next_s = 0.0  # the sink goes down for this long at the next batch
        self.stall_s = 0.0
        if callable(getattr(inner, "submit", None)):  # the framework's pipelined path
            self.submit = self._submit

    def failing(self) -> bool:
        return time.monotonic() < self.fail_until

    def _faults(self) -> None:
        if self.fail_next_s:
            self.fail_until, self.fail_next_s = time.monotonic() + self.fail_next_s, 0.0
        if self.stall_s:
            stall, self.stall_s = self.stall_s, 0.0
            time.sleep(stall)
        if self.fails_at is None and self.failing():
            raise ConnectionError("the sink is down for this consumer (injected)")

    def inside(self, point: str) -> None:
        """The handler's fault hook."""
        if point == self.fails_at and self.failing():
            raise ConnectionError(f"the sink is down for this consumer at {point} (injected)")

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self._faults()
        return self.inner.handle(batch)

    def _submit(self, batch: Batch, before_write: Callable[[Batch], None]):
        self._faults()
        return self.inner.submit(batch, before_write)


class Fleet:
    """The consumers of the group, as threads."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        build: Callable[..., Any] = pipeline_handler,
        healthy: Callable[[Settings], bool] = stores_healthy,
        fails_at: str | None = None,
    ) -> None:
        """``build(settings)`` makes a consumer's handler; with ``fails_at``,
        ``build(settings, fault)`` makes one that calls ``fault(point)`` at its fault points
        (the sink fails there, see :class:`Faulty`)."""
        self.settings, self.topic = settings, topic
        self.build, self.healthy, self.fails_at = build, healthy, fails_at
        self.group = f"clickflow-rebalance-{topic}"
        self.running: list[tuple[BatchConsumer, Faulty, threading.Thread]] = []
        self.stats: list[BatchConsumer] = []

    def add(self, evictable: bool = False) -> tuple[BatchConsumer, Faulty]:
        s = self.settings
        if self.fails_at is None:
            handler = Faulty(self.build(s))
        else:
            handler = Faulty(None, self.fails_at)
            handler.inner = self.build(s, handler.inside)
        conf = consumer_config(s, self.group)
        if evictable:
            conf["max.poll.interval.ms"] = EVICTED_AFTER_MS
        consumer = BatchConsumer(
            name="rebalance",
            topics=[self.topic],
            handler=handler,
            consumer_conf=conf,
            dlq_producer=EventProducer(producer_config(s, **{"linger.ms": 1})),
            trigger=BatchTrigger(max_records=2000, max_seconds=0.3),
            delivery=Delivery.EXACTLY_ONCE,
            intent_log=ClickHouseIntentLog(s),
            backoff_initial=0.1,
            backoff_max=1.0,
            # The injected sink failure is an outage: the health check reports it.
            health_check=lambda: not handler.failing() and self.healthy(s),
        )
        t = threading.Thread(target=consumer.run, daemon=True, name="rebalance-consumer")
        t.start()
        self.running.append((consumer, handler, t))
        self.stats.append(consumer)
        return consumer, handler

    def close(self, index: int = 0) -> None:
        consumer, handler, t = self.running.pop(index)
        consumer.stop()
        t.join(60)
        assert not t.is_alive(), "a consumer did not stop"
        close = getattr(handler.inner, "close", None)
        if callable(close):  # its own threads (UGC: the background sweep) stop with it
            close()

    def close_all(self) -> None:
        while self.running:
            self.close()

    def describe(self) -> str:
        import sys
        import traceback

        frames = sys._current_frames()
        stacks = "\n".join(
            "".join(traceback.format_stack(frames[t.ident])[-6:])
            for _c, _h, t in self.running
            if t.ident in frames
        )
        return stacks + "; ".join(
            f"owns {sorted(p for _t, p in c._epochs)} read {c.stats.records} "
            f"batches {c.stats.batches} retries {c.stats.retries} "
            f"paused {c._paused is not None} in flight {len(c._in_flight)}"
            for c, _h, _t in self.running
        )

    def alive(self) -> None:
        for consumer, _h, t in self.running:
            assert t.is_alive(), f"consumer thread died ({consumer.stats})"


def stamp(seconds: int, millis: int) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def page_views(n: int, rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """``n`` distinct views of the last two hours, and the stream with 2% re-sent copies."""
    now = int(time.time())
    views = [
        orjson.dumps(
            {
                "page_id": f"/page/{rng.randrange(40)}",
                "user_id": f"user-{rng.randrange(300)}",
                "view_duration_ms": rng.randrange(100, 60_000),
                "timestamp": stamp(now - 7200 + i * 7200 // n, i % 1000),
                "is_bounce": rng.random() < 0.3,
                "region": rng.choice(["eu", "us", "apac"]),
            }
        )
        for i in range(n)
    ]
    stream = list(views)
    for _ in range(n // 50):
        stream.insert(rng.randrange(len(stream)), rng.choice(views))
    return views, stream


def expected_rollups(views: list[bytes]) -> tuple[dict, dict]:
    minute: dict = defaultdict(lambda: [0, 0, set(), 0])
    hour: dict = defaultdict(lambda: [0, 0, set(), 0])
    for raw in views:
        v = orjson.loads(raw)
        t = calendar.timegm(time.strptime(v["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        for table, key in (
            (minute, (t // 60 * 60, v["page_id"])),
            (hour, (t // 3600 * 3600, v["page_id"])),
        ):
            agg = table[key]
            agg[0] += 1
            agg[1] += v["view_duration_ms"]
            agg[2].add(v["user_id"])
            agg[3] += int(v["is_bounce"])
    return (
        {k: (a[0], a[1], len(a[2]), a[3]) for k, a in minute.items()},
        {k: (a[0], a[1], len(a[2]), a[3]) for k, a in hour.items()},
    )


def move_partitions(
    s: Settings,
    fleet: Fleet,
    sender: Sender,
    profile: RebalanceProfile,
    report: Report,
    stored: Callable[[], int],
) -> None:
    """Run the moves while ``sender`` sends, until the group committed everything sent:
    three consumers, then per cycle one closed while the sink fails for another, one added
    that stalls past its eviction with a batch in hand, one closed and one added.
    ``stored`` counts the rows of the pipeline's raw table (progress between the moves)."""

    def progressed(timeout: float = 30) -> None:
        """Wait until more rows were stored (so the next fault hits a working group)."""
        before = stored()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fleet.alive()
            if stored() > before or not sender.is_alive():
                return
            time.sleep(0.1)

    try:
        fleet.add()
        sender.start()
        fleet.add()
        progressed()
        fleet.add()  # three consumers
        report.faults["consumer added"] += 3
        for _ in range(profile.cycles):
            progressed()
            # The sink fails for the consumers that stay while another one leaves the group
            # (each at its next batch: on a busy machine one of them may own nothing then),
            # longer than the group takes to drop the leaver (SESSION_MS): the partitions
            # move while the failed batches wait for their retry, which is fenced off and
            # replayed by the next owner.
            for _c, staying, _t in fleet.running[:1] + fleet.running[2:]:
                staying.fail_next_s = SESSION_MS / 1000 + 3
            fleet.close(1)
            report.faults["consumer closed, sink failing for another"] += 1
            progressed()
            staller, handler = fleet.add(evictable=True)
            report.faults["consumer added"] += 1
            deadline = time.monotonic() + 60
            while staller.stats.batches == 0 and sender.is_alive():
                assert time.monotonic() < deadline, "the new consumer wrote nothing"
                time.sleep(0.1)
            # It stalls with a batch in hand until the group evicts it, then writes.
            handler.stall_s = EVICTED_AFTER_MS / 1000 + 3
            report.faults["consumer stalled past eviction"] += 1
            progressed()
            progressed()
            fleet.close(0)
            fleet.add()
            report.faults["consumer closed"] += 1
            report.faults["consumer added"] += 1
        sender.finish(300)
        ends = sender.ends()
        deadline = time.monotonic() + 180
        while any(committed(s, fleet.group, fleet.topic, 4).get(p, 0) < e for p, e in ends.items()):
            fleet.alive()
            assert time.monotonic() < deadline, (
                f"the group did not catch up: {committed(s, fleet.group, fleet.topic, 4)} "
                f"of {ends}; {fleet.describe()}"
            )
            time.sleep(0.5)
    finally:
        fleet.close_all()


#: short in `make test`, long in `make chaos`; the timeouts hold on a loaded 2-core machine
#: (alone, a short run takes about 35 s, a long one 2 to 5 minutes).
RUNS = [
    pytest.param(SHORT, marks=[pytest.mark.slow, pytest.mark.timeout(900)], id="short"),
    pytest.param(LONG, marks=[pytest.mark.chaos, pytest.mark.timeout(1800)], id="long"),
]


@pytest.mark.parametrize("profile", RUNS)
def test_pageviews_exactly_once_while_partitions_move(
    settings: Settings, redis_url: str, profile: RebalanceProfile
) -> None:
    started = time.monotonic()
    s = settings.model_copy(update={"redis_url": redis_url, "kafka_session_timeout_ms": SESSION_MS})
    migrate_clickhouse(s, ["pageviews"])
    topic = f"rebalance-pv-{uuid.uuid4().hex[:8]}"
    ensure_topics(s.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    rng = random.Random(20)
    views, stream = page_views(profile.events, rng)
    report = Report("pageviews (3 consumers, rebalances)", profile.name)
    ch = clickhouse_client(s)
    fleet = Fleet(s, topic)
    sender = Sender(s, topic, [(None, v, None) for v in stream], profile.rate)

    move_partitions(
        s,
        fleet,
        sender,
        profile,
        report,
        stored=lambda: ch.command("SELECT count() FROM page_views_raw"),
    )

    ids = Counter(
        dict(ch.query("SELECT event_id, count() FROM page_views_raw GROUP BY event_id").result_rows)
    )
    truth = {event_identity(v) for v in views}
    report.sent = len(stream)
    report.valid = len(truth)
    report.lost = len(truth - ids.keys())
    report.duplicated = sum(c - 1 for c in ids.values()) + len(ids.keys() - truth)
    report.seconds = time.monotonic() - started
    RESULTS.append(report)
    assert sum(c.stats.retries for c in fleet.stats) > 0  # the sink failure was retried
    assert (report.lost, report.duplicated) == (0, 0)
    minute, hour = expected_rollups(views)
    for table, expected in (("page_views_agg_minute", minute), ("page_views_agg_hour", hour)):
        got = rows_to_comparable(ch.query(ROLLUP_SQL.format(table=table)).result_rows)
        assert got == expected, table
    assert sum(c.stats.dead_letters for c in fleet.stats) == 0


@pytest.mark.parametrize("profile", RUNS)
def test_adclicks_exactly_once_while_partitions_move(
    settings: Settings, redis_url: str, profile: RebalanceProfile
) -> None:
    """Ad clicks (late clicks, re-sent copies, broken records) through the same moves: every
    valid click once in the raw table and in the minute buckets, every broken one in the DLQ."""
    started = time.monotonic()
    s = settings.model_copy(update={"redis_url": redis_url, "kafka_session_timeout_ms": SESSION_MS})
    migrate_clickhouse(s, ["adclicks"])
    topic = f"rebalance-ad-{uuid.uuid4().hex[:8]}"
    ensure_topics(s.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    stream = make_stream(profile.events, seed=20, topic=topic, copy_share=0.05)
    report = Report("adclicks (3 consumers, rebalances)", profile.name)
    ch = clickhouse_client(s)
    cfg = AdClicksConfig(topic=topic)
    fleet = Fleet(
        s,
        topic,
        build=lambda settings: AdClicksHandler(settings, cfg),
        healthy=stores_answer("clickhouse", "redis"),
    )
    sender = Sender(s, topic, [(ev.key, ev.value, p) for ev, p in stream.sends], profile.rate)
    move_partitions(
        s,
        fleet,
        sender,
        profile,
        report,
        stored=lambda: ch.command("SELECT count() FROM ad_clicks_raw"),
    )

    stored = Counter(
        dict(ch.query("SELECT click_id, count() FROM ad_clicks_raw GROUP BY click_id").result_rows)
    )
    valid = stream.valid.keys()
    report.sent = len(stream.sends)
    report.valid = len(valid)
    report.lost = len(valid - stored.keys())
    report.duplicated = sum(c - 1 for c in stored.values()) + len(stored.keys() - valid)
    broken = {sender.landed[i] for i, (ev, _p) in enumerate(stream.sends) if ev.broken is not None}
    found = dlq_sources(s, dlq_topic(topic), 4)
    check_dlq(report, found, broken)  # type: ignore[arg-type]
    report.seconds = time.monotonic() - started
    RESULTS.append(report)
    assert sum(c.stats.retries for c in fleet.stats) > 0  # the sink failure was retried
    assert (report.lost, report.duplicated) == (0, 0)
    per_ad = dict(
        ch.query("SELECT ad_id, sum(clicks) FROM ad_clicks_minute GROUP BY ad_id").result_rows
    )
    assert per_ad == dict(Counter(t["ad_id"] for t in stream.valid.values()))
    assert set(found) == broken


# UGC pairs page views on the Kafka clock. A short wait makes halves expire while partitions
# move: starts whose end never comes are emitted unpaired by the chunk path of whichever
# consumer owns the partition, and by the background sweeps of all three (every second,
# over every partition), racing the owner's chunks. Tombstones outlive the run, so a late
# re-send is still recognised (as with the 12 h defaults).
UGC_WAIT_S = 2.0


def ugc_stream(events: int, seed: int, topic: str) -> tuple[list[tuple[bytes, bytes]], set[int]]:
    """``events`` records as the collector publishes them (keyed by user_id: both halves of
    a page view on one partition), with 2% client re-sends of an event (same event_id, half
    of them with the collector's new timestamp) placed after the original, and a few broken
    records of every kind. Returns (key, value) pairs and the indexes of the broken ones."""
    rng = random.Random(seed)
    factory = UgcEventFactory(users=2000, max_end_delay=100, topic=topic, seed=seed)
    now = time.time()
    made = [factory.valid(rng, now) for _ in range(events)]
    made += factory.pending()
    # index in made -> the copies sent after it, with their own key
    after: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for _ in range(events // 50):
        i = rng.randrange(len(made))
        value = made[i].value
        if rng.random() < 0.5:  # the answer was lost: the collector stamps the retry anew
            rec = orjson.loads(value)
            rec["timestamp"] += rng.randrange(1, 500)
            value = orjson.dumps(rec)
        after[rng.randrange(i, len(made))].append((made[i].key or b"", value))
    sends: list[tuple[bytes, bytes]] = []
    for i, ev in enumerate(made):
        sends.append((ev.key or b"", ev.value))
        sends += after[i]
    broken: set[int] = set()
    for kind in factory.breakages:
        for _ in range(5):
            bad = factory.broken(rng, now, kind)
            at = rng.randrange(len(sends) + 1)
            broken = {j + (j >= at) for j in broken} | {at}
            sends.insert(at, (bad.key or b"", bad.value))
    return sends, broken


def ugc_truth(log: list[tuple[bytes, int]]) -> dict[str, Counter]:
    """Per event table, its rows (event_id, user_id, timestamp ms): the first record of each
    (kind, user_id, event_id) in log order, whatever re-sent it."""
    first: dict[tuple[str, str, str], int] = {}
    for value, _kts in log:
        rec = orjson.loads(value)
        if rec["event"] in UGC_TABLES:
            first.setdefault((rec["event"], rec["user_id"], rec["event_id"]), rec["timestamp"])
    out: dict[str, Counter] = {table: Counter() for table in UGC_TABLES.values()}
    for (kind, user, event_id), ts in first.items():
        out[UGC_TABLES[kind]][(event_id, user, ts)] += 1
    return out


@pytest.mark.parametrize("profile", RUNS)
def test_ugc_exactly_once_while_partitions_move(
    settings: Settings, redis_url: str, profile: RebalanceProfile
) -> None:
    """UGC (re-sent events, page-view halves paired in Redis, broken records) through the
    same moves: every event table holds the first copy of every event once, every page view
    is one row, paired iff its halves reached Kafka within the wait, expired starts emitted
    once whichever consumer or sweep got there; every broken record in the errors table and
    the DLQ once."""
    started = time.monotonic()
    s = settings.model_copy(update={"redis_url": redis_url, "kafka_session_timeout_ms": SESSION_MS})
    migrate_clickhouse(s, ["ugc"])
    topic = f"rebalance-ugc-{uuid.uuid4().hex[:8]}"
    ensure_topics(s.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    sends, broken_at = ugc_stream(profile.events, seed=20, topic=topic)
    cfg = UgcConfig(
        topic=topic,
        redis_prefix=f"rb{uuid.uuid4().hex[:8]}:",
        page_view_max_wait_seconds=UGC_WAIT_S,
        done_ttl_seconds=3600,
        sweep_interval_seconds=1,
        idle_clock_margin_seconds=1,
    )
    report = Report("ugc (3 consumers, rebalances)", profile.name)
    ch = clickhouse_client(s)
    fleet = Fleet(
        s,
        topic,
        build=lambda settings, fault: UgcHandler(settings, cfg, fault=fault),
        healthy=stores_answer("clickhouse", "redis"),
        # Redis (the pairing state) fails after the chunk's inserts: the partition moves
        # with its rows stored and its pairing state not updated.
        fails_at="after_insert",
    )
    sender = Sender(s, topic, [(key, value, None) for key, value in sends], profile.rate)
    move_partitions(
        s,
        fleet,
        sender,
        profile,
        report,
        stored=lambda: ch.command("SELECT count() FROM ugc_element_click"),
    )

    # Starts whose wait ended on the Kafka clock while partitions moved (chunk paths and
    # background sweeps); every end was handled: what still waits expires now, as a day later.
    expired_while_moving = ch.command("SELECT count() FROM ugc_page_view WHERE paired = 0")
    far_future = int(time.time() * 1000) + 10 * 86_400_000
    sweeper = UgcHandler(s, cfg, background_sweep=False)
    try:
        sweeper.sweep(now_ms=far_future)
    finally:
        sweeper.close()
    broken = {sender.landed[i] for i in broken_at}
    records = sorted(
        (m for m in read_topic(s, topic, 4) if (m.partition(), m.offset()) not in broken),
        key=lambda m: (m.partition(), m.offset()),
    )
    assert len(records) == len(sends) - len(broken_at)
    log = [(m.value(), m.timestamp()[1]) for m in records]

    report.sent = len(sends)
    report.valid = len(sends) - len(broken_at)
    # Without FINAL: a row written twice shows until a merge collapses it (exact copies of a
    # row collapse by design, the tables are ReplacingMergeTree and the API reads with FINAL);
    # ugc_processing_errors is a plain MergeTree and keeps every copy.
    diffs: dict[str, tuple[list, list]] = {}
    for table, want in ugc_truth(log).items():
        got = Counter(
            tuple(r)
            for r in ch.query(
                # the pipeline's own table names, no outside text
                f"SELECT event_id, user_id, toUnixTimestamp64Milli(timestamp) FROM {table}"  # noqa: S608
            ).result_rows
        )
        report.lost += sum((want - got).values())
        report.duplicated += sum((got - want).values())
        diffs[table] = (list(want - got)[:3], list(got - want)[:3])
    want_views = Counter(expected_by_kafka_time(log, int(UGC_WAIT_S * 1000)))
    got_views = Counter(tuple(r) for r in ch.query(PAGE_VIEW_SQL).result_rows)
    report.lost += sum((want_views - got_views).values())
    report.duplicated += sum((got_views - want_views).values())
    errors = Counter(
        (p, o)
        for p, o in ch.query("SELECT partition, offset FROM ugc_processing_errors").result_rows
    )
    found = dlq_sources(s, dlq_topic(topic), 4)
    check_dlq(report, found, broken)  # type: ignore[arg-type]
    report.seconds = time.monotonic() - started
    RESULTS.append(report)
    assert sum(c.stats.retries for c in fleet.stats) > 0  # the sink failure was retried
    assert (report.lost, report.duplicated) == (0, 0), (
        diffs,
        list(want_views - got_views)[:3],
        list(got_views - want_views)[:3],
    )
    paired = sum(n for row, n in want_views.items() if row[-1] == 1)
    assert paired > 1000 and len(want_views) - paired > 100  # both verdicts were reached
    assert expired_while_moving > 0
    assert errors == Counter(broken)
    assert set(found) == broken
