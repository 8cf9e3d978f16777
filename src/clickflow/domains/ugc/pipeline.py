"""The UGC ETL: collector records (``UgcRecord`` JSON, keyed by user_id) into ClickHouse.

Each record is validated against its kind's schema; invalid ones go to the DLQ with the
reason and to ``ugc_processing_errors``. Valid ones go to one table per kind; page view
halves are paired first (see :mod:`clickflow.domains.ugc.pairing` for the exactly-once
design). Every insert carries the chunk's deduplication token, one per table.

Verdicts depend only on the record and the time it reached Kafka (its message timestamp),
never on the processing clock, so a replay reaches the same verdict: a ``timestamp`` more
than ``max_future_seconds`` after its Kafka time is "in the future", one more than
``retention_days`` before it is "too old" (the tables would drop it on insert).

Client event ids are not global: a re-sent event is recognised by its claim on
(kind, user_id, event_id), so two users whose SDKs number events 1, 2, 3 both keep theirs.

Operation: continuous by default, or scheduled (one batch every X seconds) — see
:mod:`clickflow.domains.ugc.config`. Orphaned starts are swept every
``CLICKFLOW_UGC_SWEEP_INTERVAL_SECONDS`` by a background thread, even with no traffic.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Union

import msgspec
import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Message, TopicPartition
from msgspec.structs import astuple

from clickflow.config import Settings
from clickflow.domains import domain_sql
from clickflow.domains.ugc import metrics
from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.events import EVENT_KINDS, UgcRecord, decode_data
from clickflow.domains.ugc.pairing import (
    END,
    PAGE_VIEW_COLUMNS,
    START,
    Half,
    PageViewPairing,
    PairingPlan,
)
from clickflow.exactly_once.claims import IdentityClaims
from clickflow.exactly_once.insert import insert_chunk
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch, Chunk, Delivery
from clickflow.kafka.config import consumer_config
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.logs import log_fields
from clickflow.observability import tracing
from clickflow.pipelines import PipelineOptions, PipelineSpec, stores_answer
from clickflow.stores.clickhouse import clickhouse_client
from clickflow.stores.redis import redis_client

log = logging.getLogger("clickflow.ugc")

TABLES = {
    "element_click": "ugc_element_click",
    "quality_change": "ugc_quality_change",
    "video_complete": "ugc_video_complete",
    "search_filter": "ugc_search_filter",
}
PAGE_VIEW_TABLE = "ugc_page_view"
ERRORS_TABLE = "ugc_processing_errors"
HALF_KINDS = {"page_view_start": START, "page_view_end": END}

# Server timestamps in epoch milliseconds: 2001-09-09 .. 2286-11-20.
MIN_TS_MS = 1_000_000_000_000
MAX_TS_MS = 9_999_999_999_999

_decoder = msgspec.json.Decoder(UgcRecord)
_default_config = UgcConfig()
DAY_MS = 86_400_000


class MissingKindTable(LookupError):
    """A registered UGC kind has no table to go to."""


def check_kind_tables(kinds: Iterable[str], tables: dict[str, str], schema: str) -> None:
    """Every registered kind is a page-view half or has a table created by ``schema``:
    a clear error at start-up instead of a ``KeyError`` retried for ever on its first event."""
    for kind in kinds:
        if kind in HALF_KINDS:
            continue
        table = tables.get(kind)
        if table is None:
            raise MissingKindTable(
                f"UGC kind {kind!r} is registered in events.EVENT_KINDS but has no table in "
                "pipeline.TABLES: add one (and its CREATE TABLE in schema.sql)"
            )
        if f"CREATE TABLE IF NOT EXISTS {table}\n" not in schema:
            raise MissingKindTable(
                f"UGC kind {kind!r} goes to table {table!r}, which schema.sql does not create"
            )


def _typed_record(kind: str, data: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """``UgcRecord`` with ``data`` typed for ``kind``, tagged by ``event``."""
    fields = [(f, t) for f, t in UgcRecord.__annotations__.items() if f not in ("event", "data")]
    return msgspec.defstruct(
        f"{kind}_record",
        [(f, {"str": str, "int": int}[t]) for f, t in fields] + [("data", data)],
        tag_field="event",
        tag=kind,
        namespace={"event": kind},  # rec.event, as on UgcRecord
    )


# One pass decodes and validates the envelope and the kind's data (the kinds of events.py).
_TYPED = {kind: _typed_record(kind, cls) for kind, cls in EVENT_KINDS.items()}
_typed_decoder = msgspec.json.Decoder(Union[tuple(_TYPED.values())])  # noqa: UP007


class InvalidRecord(ValueError):
    def __init__(self, reason: str, event: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event


def decode_record(
    value: bytes | None, kafka_ms: int | None = None, config: UgcConfig | None = None
) -> tuple[Any, msgspec.Struct]:
    """Decode and validate one Kafka record; raises :class:`InvalidRecord` with the reason.

    ``kafka_ms`` is when the record reached Kafka: the timestamp is judged against it
    (``config``'s ``max_future_seconds`` and ``retention_days``), never against the clock.
    Returns (record, data): ``record`` has ``event``, ``event_id``, ``user_id``, ``timestamp``
    (epoch ms) like :class:`UgcRecord`; ``data`` is the kind's Struct."""
    if not value:
        raise InvalidRecord("empty record")
    try:
        rec = _typed_decoder.decode(value)
    except msgspec.DecodeError:
        _explain(value)  # raises the precise reason
        raise InvalidRecord("invalid record") from None
    except (UnicodeDecodeError, RecursionError) as e:  # not UTF-8 / nested thousands deep
        raise InvalidRecord(f"malformed JSON: {e}") from None
    if not rec.user_id or len(rec.user_id) > 128:
        raise InvalidRecord("user_id must be 1..128 characters", rec.event)
    if not rec.event_id or len(rec.event_id) > 128:
        raise InvalidRecord("event_id must be 1..128 characters", rec.event)
    if not MIN_TS_MS <= rec.timestamp <= MAX_TS_MS:
        raise InvalidRecord(f"timestamp {rec.timestamp} is not epoch milliseconds", rec.event)
    if kafka_ms is not None:
        cfg = config or _default_config
        ahead = rec.timestamp - kafka_ms
        if ahead > cfg.max_future_seconds * 1000:
            raise InvalidRecord(
                f"timestamp {rec.timestamp} is too far in the future: {ahead / 1000:.0f} s "
                f"after the record reached Kafka (at most {cfg.max_future_seconds:g} s)",
                rec.event,
            )
        if -ahead > cfg.retention_days * DAY_MS:
            raise InvalidRecord(
                f"timestamp {rec.timestamp} is too old: {-ahead / DAY_MS:.0f} days before the "
                f"record reached Kafka, beyond the {cfg.retention_days}-day retention",
                rec.event,
            )
    return rec, rec.data


def kafka_ms(m: Message) -> int | None:
    """When the record reached Kafka (its message timestamp, epoch ms), if it has one."""
    kind, ts = m.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else ts


def _explain(value: bytes) -> None:
    """The slow path for a rejected record: say what is wrong, in which part."""
    try:
        rec = _decoder.decode(value)
    except msgspec.ValidationError as e:
        raise InvalidRecord(f"invalid record: {e}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRecord(f"malformed JSON: {e}") from None
    if rec.event not in EVENT_KINDS:
        raise InvalidRecord(f"unknown event kind {rec.event[:64]!r}", rec.event[:64])
    try:
        decode_data(rec.event, rec.data)
    except msgspec.ValidationError as e:
        raise InvalidRecord(f"invalid data for {rec.event}: {e}", rec.event) from None


# Rows are tuples in each table's column order, inserted as JSONCompactColumns (one JSON
# array per column): one orjson call per chunk and table instead of a dict and a dumps per
# row (2.4 us per row in Python before, 0.2 us now; ClickHouse parses both at the same cost).
EVENT_COLUMNS = ("event_id", "user_id", "timestamp")
COLUMNS: dict[str, tuple[str, ...]] = {
    **{t: EVENT_COLUMNS + EVENT_KINDS[k].__struct_fields__ for k, t in TABLES.items()},
    PAGE_VIEW_TABLE: PAGE_VIEW_COLUMNS,
    ERRORS_TABLE: ("topic", "partition", "offset", "event", "reason", "raw"),
}


def event_row(rec: Any, data: msgspec.Struct) -> tuple:
    """The row of an event table (``COLUMNS``); DateTime64 as float seconds."""
    return (rec.event_id, rec.user_id, rec.timestamp / 1000, *astuple(data))


def error_row(m: Message, err: InvalidRecord) -> tuple:
    raw = (m.value() or b"")[:4096].decode("utf-8", errors="replace")
    return (m.topic(), m.partition(), m.offset(), err.event, err.reason[:1000], raw)


def claim_identity(kind: str, user_id: str, event_id: str) -> str:
    """``scoped_identity(kind, user_id, event_id)`` spelled out (a tested equality): the
    same claims as before, without a generator and a join per record."""
    return f"{len(kind)}:{kind}{len(user_id)}:{user_id}{event_id}"


def _json_columns(rows: list[tuple]) -> bytes:
    return orjson.dumps(list(zip(*rows, strict=True)))


@dataclass(slots=True)
class _Prepared:
    """A chunk read, validated, claimed and planned, not yet written."""

    letters: list[DeadLetter]
    rows: dict[str, list[tuple]]
    plan: PairingPlan
    counts: dict[str, int]
    dups: dict[str, int]


class UgcHandler:
    """The batch handler: validate, pair, insert (per chunk), then update the pairing state."""

    def __init__(
        self,
        settings: Settings,
        config: UgcConfig | None = None,
        background_sweep: bool = True,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        check_kind_tables(EVENT_KINDS, TABLES, domain_sql("ugc", "schema.sql") or "")
        self.settings = settings
        self.config = config or UgcConfig()
        self._pairing: PageViewPairing | None = None
        # A client retry after a lost answer re-sends the event_id with a new server
        # timestamp (another record): claims drop it, while a replay keeps its own claim.
        # Claimed per (kind, user_id, event_id): client ids are only unique per client.
        self.claims = IdentityClaims(
            settings, f"{self.config.redis_prefix}seen:", self.config.dedup_window_seconds
        )
        self._watermarks: Consumer | None = None  # reads partition ends for the idle sweep
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Prepares the next chunk while the current one is written (see handle).
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="ugc-prepare")
        # A chunk's tables are inserted side by side (each thread has its own chDB client).
        self._inserter = ThreadPoolExecutor(
            self.config.insert_threads, thread_name_prefix="ugc-insert"
        )
        # Tests: raise at "after_insert" / "after_redis" / "sweep_insert" / "sweep_inserted".
        self._fault = fault
        self._sweeper: threading.Thread | None = None
        if background_sweep:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="ugc-sweep", daemon=True)
            self._sweeper.start()
            # Stop it before the interpreter tears down: a daemon thread caught inside
            # librdkafka or chDB at exit crashes the process (SIGSEGV).
            atexit.register(self.close)

    @property
    def pairing(self) -> PageViewPairing:
        """Connected on first use: without Redis the pipeline reports "sink down" and
        retries (the framework logs why) instead of stopping the process it shares."""
        if self._pairing is None:
            self._pairing = PageViewPairing(redis_client(self.settings), self.config)
        return self._pairing

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
            atexit.unregister(self.close)
        with self._lock:
            if self._watermarks is not None:
                self._watermarks.close()
                self._watermarks = None
        self._preparer.shutdown(wait=True)
        self._inserter.shutdown(wait=True)

    # -- batches ------------------------------------------------------------------------------

    def handle(self, batch: Batch) -> list[DeadLetter]:
        """Chunks are written in order, each one's inserts before its Redis update, as if one
        after the other. The next chunk is prepared (decoded, claimed, planned) in a worker
        thread meanwhile, unless it is of the same partition (its plan reads what this one
        writes): Python and Redis work beside chDB's insert, which releases the GIL."""
        letters: list[DeadLetter] = []
        chunks = batch.chunks
        with self._lock:
            if not chunks:
                return letters
            ahead = self._preparer.submit(self._prepare, chunks[0])
            try:
                for i, chunk in enumerate(chunks):
                    prepared = ahead.result()
                    ahead = None
                    nxt = chunks[i + 1] if i + 1 < len(chunks) else None
                    if nxt is not None and nxt.partition != chunk.partition:
                        ahead = self._preparer.submit(self._prepare, nxt)
                    self._write(batch.group, chunk, prepared)
                    letters += prepared.letters
                    if nxt is not None and ahead is None:
                        ahead = self._preparer.submit(self._prepare, nxt)
            finally:
                if ahead is not None:  # a write failed: nothing of this batch left running
                    wait([ahead])
        return letters

    def _prepare(self, chunk: Chunk) -> _Prepared:
        """Decode, validate and claim the chunk's records and plan its page views: reads
        Redis (and claims), writes nothing else."""
        rows: dict[str, list[tuple]] = defaultdict(list)
        halves: list[Half] = []
        letters: list[DeadLetter] = []
        seen: set[str] = set()
        events: list[tuple[str, Any, msgspec.Struct]] = []
        claims: list[tuple[str, str]] = []  # (identity, owner) of each of ``events``
        owner = f"{chunk.topic}/{chunk.partition}/"
        counts: dict[str, int] = defaultdict(int)
        dups: dict[str, int] = defaultdict(int)
        config = self.config
        clock = 0  # the chunk's Kafka clock: its largest message timestamp
        for m in chunk.messages:
            arrived = kafka_ms(m)
            if arrived is not None and arrived > clock:
                clock = arrived
            try:
                rec, data = decode_record(m.value(), arrived, config)
            except InvalidRecord as e:
                letters.append(DeadLetter(m, e.reason))
                rows[ERRORS_TABLE].append(error_row(m, e))
                continue
            kind = rec.event
            counts[kind] += 1
            half = HALF_KINDS.get(kind)
            if half is not None:
                halves.append(
                    Half(
                        half,
                        rec.event_id,
                        rec.user_id,
                        data.page_view_id,
                        rec.timestamp,
                        data.page_type,
                        rec.timestamp if arrived is None else arrived,
                    )  # fmt: skip
                )
                continue
            identity = claim_identity(kind, rec.user_id, rec.event_id)
            if identity in seen:  # an exact re-send within the chunk
                dups[kind] += 1
                continue
            seen.add(identity)
            events.append((kind, rec, data))
            claims.append((identity, f"{owner}{m.offset()}"))
        if clock == 0:  # no message timestamps (never with Kafka >= 0.10): event time
            clock = max((h.ts for h in halves), default=0)
        resent = self.claims.duplicates(claims)
        for i, (kind, rec, data) in enumerate(events):
            if i in resent:
                dups[kind] += 1
            else:
                rows[TABLES[kind]].append(event_row(rec, data))
        plan = self.pairing.plan(halves, chunk.partition, clock, chunk.last_offset)
        if plan.rows:
            rows[PAGE_VIEW_TABLE] = plan.rows
        return _Prepared(letters, rows, plan, counts, dups)

    def _write(self, group: str, chunk: Chunk, prepared: _Prepared) -> None:
        """Insert the chunk's rows, then apply its pairing mutations (in this order: see
        :mod:`clickflow.domains.ugc.pairing`)."""
        plan, counts, dups = prepared.plan, prepared.counts, prepared.dups
        letters = prepared.letters
        # Each insert runs in a copy of this thread's context: its span stays a child of
        # the batch's span.
        inserts = [
            self._inserter.submit(
                copy_context().run, self._insert, table, table_rows, chunk.token(group, table)
            )
            for table, table_rows in prepared.rows.items()
        ]
        wait(inserts)
        for done in inserts:
            done.result()  # the first failure, once every insert has finished
        if self._fault:
            self._fault("after_insert")
        plan.token = chunk.token(group, "pairing")
        self.pairing.apply(plan)
        if self._fault:
            self._fault("after_redis")
        for kind, n in counts.items():
            metrics.EVENTS.labels(kind).inc(n)
        for kind, n in dups.items():
            metrics.DUPLICATES.labels(kind).inc(n)
        if plan.duplicates:
            metrics.DUPLICATES.labels("page_view").inc(plan.duplicates)
        if plan.late:
            metrics.LATE_ENDS.inc(plan.late)
        if plan.pairs:
            metrics.PAIRS.inc(plan.pairs)
        if plan.orphans:
            metrics.ORPHANS.inc(plan.orphans)
        if plan.orphan_ends:
            metrics.ORPHAN_ENDS.inc(plan.orphan_ends)
        if plan.missing:
            metrics.MISSING.inc(plan.missing)
            log.warning("waiting page views found empty", extra=log_fields(missing=plan.missing))
        if plan.pairs or plan.orphans:
            metrics.update_unended_share()
        if letters:
            metrics.INVALID.inc(len(letters))

    def _insert(self, table: str, rows: list[tuple], token: str) -> None:
        """``rows`` in the column order of ``COLUMNS[table]``."""
        with tracing.store_span("clickhouse", table, len(rows)):
            insert_chunk(
                clickhouse_client(self.settings),
                table,
                _json_columns(rows),
                token,
                columns=COLUMNS[table],
                fmt="JSONCompactColumns",
            )

    # -- orphans ------------------------------------------------------------------------------

    def sweep(self, now_ms: int | None = None) -> int:
        """Emit the halves whose wait is over; returns how many starts were emitted.

        With ``now_ms`` (operators, tests): every partition's clock is taken to be
        ``now_ms``. Without: each partition's own Kafka clock, moved to the wall clock
        minus ``idle_clock_margin_seconds`` for a partition read to its end (no record
        will come to move it, and the next one will be stamped after now)."""

        def insert(rows: list[tuple], token: str) -> None:
            if self._fault:
                self._fault("sweep_insert")
            self._insert(PAGE_VIEW_TABLE, rows, token)
            if self._fault:
                self._fault("sweep_inserted")

        with self._lock:
            known = self.pairing.clocks()
            if now_ms is not None:
                clocks = {p: now_ms for p in known}
            else:
                clocks = self._idle_clocks(known)
            res = self.pairing.sweep(insert, clocks)
            metrics.PENDING.set(self.pairing.pending_count())
        if res.orphans:
            metrics.ORPHANS.inc(res.orphans)
            metrics.update_unended_share()
        if res.orphan_ends:
            metrics.ORPHAN_ENDS.inc(res.orphan_ends)
        if res.missing:
            metrics.MISSING.inc(res.missing)
        if res.orphans or res.orphan_ends:
            log.info(
                "orphans expired",
                extra=log_fields(orphans=res.orphans, orphan_ends=res.orphan_ends),
            )
        return res.orphans

    def _idle_clocks(self, known: dict[int, tuple[int, int]]) -> dict[int, int]:
        """Partition clocks for the background sweep: the Kafka clock, or for a partition
        whose every record was handled, the wall clock minus the skew margin."""
        if self._watermarks is None:
            conf = consumer_config(self.settings, f"ugc-sweep-{uuid.uuid4().hex[:8]}")
            self._watermarks = Consumer(conf)
        now = int(time.time() * 1000 - self.config.idle_clock_margin_seconds * 1000)
        clocks: dict[int, int] = {}
        for p, (clock, offset) in known.items():
            tp = TopicPartition(self.config.topic, p)
            _low, high = self._watermarks.get_watermark_offsets(tp, timeout=5, cached=False)
            clocks[p] = max(clock, now) if offset + 1 >= high else clock
        return clocks

    def _sweep_loop(self) -> None:
        interval = self.config.sweep_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception as e:  # Redis/ClickHouse/Kafka down: the next round redoes it
                log.warning(
                    "orphan sweep failed", extra=log_fields(error=f"{type(e).__name__}: {e}")
                )


def build_handler(settings: Settings, _options: PipelineOptions) -> UgcHandler:
    if not settings.redis_url:
        log.error("the ugc pipeline pairs page views in Redis: set CLICKFLOW_REDIS_URL")
    return UgcHandler(settings, UgcConfig())


def _build_intent_log(settings: Settings) -> ClickHouseIntentLog:
    return ClickHouseIntentLog(settings)


_config = UgcConfig()

PIPELINES = [
    PipelineSpec(
        "ugc",
        [TopicSpec(_config.topic, _config.partitions)],
        "clickhouse",
        build_handler,
        _build_intent_log,
        PipelineOptions(trigger=_config.trigger(), delivery=Delivery.EXACTLY_ONCE),
        health_check=stores_answer("clickhouse", "redis"),
    )
]
