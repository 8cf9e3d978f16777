"""Dead-letter redrive: list dead letters, and send them back to their topic once the bug
that rejected them is fixed.

A replayed record is the dead letter's original key and bytes, with a ``redrive.dlq``
header naming the dead letter (``<topic>.dlq/<partition>/<offset>``). Replaying is
idempotent for every pipeline, without relying on any pipeline's own deduplication: each
dead letter gets a *redrive marker* in ``<topic>.dlq.redrive`` (key: its DLQ partition and
offset), in two steps:

1. ``sending`` is written (and acked) before the record goes back to its topic;
2. ``sent``, with the new record's partition and offset, once the broker acked it.

A later replay skips every dead letter with a ``sent`` marker. One left at ``sending`` (the
replay died between the steps) is looked up in its topic by its ``redrive.dlq`` header,
from the time of the marker on: found, it is marked ``sent`` and skipped; not found, it is
sent again. So each dead letter goes back at most once, as long as two replays of the same
topic do not run at the same time.

After sending, the replay waits for the pipelines that consume the topic to commit past the
replayed records, then counts the replayed records that came back to the DLQ (their
``dlq.offset`` headers point at the replayed offsets); the others were stored.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from confluent_kafka import KafkaError, Message

from clickflow.config import Settings
from clickflow.kafka.browse import (
    browser,
    committed_offsets,
    header,
    partition_ranges,
    read_records,
    records_since,
)
from clickflow.kafka.config import producer_config
from clickflow.kafka.exceptions import DeliveryFailed
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics

REDRIVE_HEADER = "redrive.dlq"
SENDING, SENT = "sending", "sent"

Progress = Callable[[int], None]


def source_topic(topic: str) -> str:
    """``page_views`` or ``page_views.dlq`` -> ``page_views``."""
    return topic.removesuffix(".dlq")


def marker_topic(topic: str) -> str:
    return f"{dlq_topic(topic)}.redrive"


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of ``<topic>.dlq`` with its headers decoded (missing ones left empty)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    reason: str
    pipeline: str
    topic: str  # the topic it came from
    source_partition: int
    source_offset: int

    @property
    def ref(self) -> str:
        """``<partition>/<offset>`` in the DLQ: the key of its redrive marker."""
        return f"{self.partition}/{self.offset}"

    @classmethod
    def from_message(cls, m: Message, default_topic: str) -> DeadLetterRecord:
        def text(name: str) -> str:
            raw = header(m, name)
            return raw.decode("utf-8", "replace") if raw is not None else ""

        def number(name: str) -> int:
            value = text(name)
            return int(value) if value.lstrip("-").isdigit() and len(value) < 20 else -1

        return cls(
            partition=m.partition(),
            offset=m.offset(),
            timestamp_ms=m.timestamp()[1],
            key=m.key(),
            value=m.value() or b"",
            reason=text("dlq.reason"),
            pipeline=text("dlq.pipeline"),
            topic=text("dlq.topic") or default_topic,
            source_partition=number("dlq.partition"),
            source_offset=number("dlq.offset"),
        )


def parse_since(text: str | None, now: float | None = None) -> int | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO time, as Unix milliseconds."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        ago = timedelta(**{unit: int(m.group(1))})
        return int(((now if now is not None else time.time()) - ago.total_seconds()) * 1000)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use 30m, 2h, 7d or an ISO time") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def read_dead_letters(
    settings: Settings,
    topic: str,
    since_ms: int | None = None,
    reason: str | None = None,
    on_total: Callable[[int], None] | None = None,
    on_record: Progress | None = None,
) -> list[DeadLetterRecord]:
    """The dead letters of ``topic``, oldest first per partition; ``reason`` is a
    case-insensitive substring of the reason."""
    topic = source_topic(topic)
    consumer = browser(settings)
    try:
        ranges = partition_ranges(consumer, dlq_topic(topic))
        if on_total is not None:
            on_total(sum(r.high - r.low for r in ranges))
        messages = read_records(
            consumer,
            dlq_topic(topic),
            {r.partition: r.low for r in ranges},
            {r.partition: r.high for r in ranges},
            on_record,
        )
        letters = [
            DeadLetterRecord.from_message(m, topic) for m in records_since(messages, since_ms)
        ]
    finally:
        consumer.close()
    if reason:
        wanted = reason.casefold()
        letters = [d for d in letters if wanted in d.reason.casefold()]
    return letters


@dataclass(frozen=True, slots=True)
class Marker:
    state: str
    time_ms: int
    partition: int = -1  # where the replayed record went (SENT only)
    offset: int = -1


def read_markers(settings: Settings, topic: str) -> dict[str, Marker]:
    """The latest redrive marker of each dead letter (by its DLQ ``partition/offset``)."""
    consumer = browser(settings)
    markers: dict[str, Marker] = {}
    try:
        ranges = partition_ranges(consumer, marker_topic(topic))
        for m in read_records(
            consumer,
            marker_topic(topic),
            {r.partition: r.low for r in ranges},
            {r.partition: r.high for r in ranges},
        ):
            try:
                doc = orjson.loads(m.value() or b"")
                ref = (m.key() or b"").decode()
                marker = Marker(
                    str(doc["state"]),
                    int(doc["time_ms"]),
                    int(doc.get("partition", -1)),
                    int(doc.get("offset", -1)),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
                continue  # not ours: ignored
            if markers.get(ref, marker).state == SENT and marker.state == SENDING:
                continue
            markers[ref] = marker
    finally:
        consumer.close()
    return markers


def _link(topic: str, letter: DeadLetterRecord) -> bytes:
    return f"{dlq_topic(topic)}/{letter.partition}/{letter.offset}".encode()


def find_replayed(
    settings: Settings, topic: str, links: dict[bytes, str], since_ms: int
) -> dict[str, tuple[int, int]]:
    """Records of ``topic`` written since ``since_ms`` whose ``redrive.dlq`` header is one
    of ``links``: marker ref -> (partition, offset)."""
    consumer = browser(settings)
    found: dict[str, tuple[int, int]] = {}
    try:
        ranges = partition_ranges(consumer, topic)
        messages = read_records(
            consumer,
            topic,
            {r.partition: r.low for r in ranges},
            {r.partition: r.high for r in ranges},
        )
        for m in records_since(messages, since_ms):
            link = header(m, REDRIVE_HEADER)
            if link in links:
                found[links[link]] = (m.partition(), m.offset())
    finally:
        consumer.close()
    return found


@dataclass
class ReplayReport:
    selected: int = 0
    already_replayed: int = 0
    replayed: int = 0
    stored: int = 0
    back_to_dlq: int = 0
    pending: int = 0  # not yet handled by the pipelines when the wait ended
    groups: list[str] = field(default_factory=list)


def _groups(letters: Iterable[DeadLetterRecord], extra: list[str]) -> list[str]:
    """Consumer groups of the pipelines that dead-lettered these records."""
    from clickflow.pipelines import all_pipelines

    specs = all_pipelines()
    groups = set(extra)
    for name in {d.pipeline for d in letters}:
        spec = specs.get(name)
        if spec is not None:
            groups.add(spec.default_options.group or f"clickflow-{spec.name}")
    return sorted(groups)


def replay(
    settings: Settings,
    topic: str,
    letters: list[DeadLetterRecord],
    wait_s: float = 60.0,
    groups: list[str] | None = None,
    progress: Callable[[str, int], Progress] | None = None,
) -> ReplayReport:
    """Send ``letters`` back to ``topic`` (skipping those already sent) and count what
    the pipelines stored and what came back to the DLQ.

    ``progress(step, total)`` returns a callback advanced once per item of that step."""
    topic = source_topic(topic)
    report = ReplayReport(selected=len(letters))
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(marker_topic(topic), 1)])
    markers = read_markers(settings, topic)
    stuck = {
        _link(topic, d): d.ref
        for d in letters
        if d.ref in markers and markers[d.ref].state == SENDING
    }
    producer = EventProducer(producer_config(settings, **{"linger.ms": 5}))
    marks = _Marks(producer, topic)
    if stuck:
        since = min(markers[ref].time_ms for ref in stuck.values()) - 60_000
        for ref, (p, o) in find_replayed(settings, topic, stuck, since).items():
            marks.add(ref, SENT, p, o)
            markers[ref] = Marker(SENT, int(time.time() * 1000), p, o)
        marks.flush()
    todo = [d for d in letters if markers.get(d.ref) is None or markers[d.ref].state != SENT]
    report.already_replayed = len(letters) - len(todo)
    report.groups = _groups(letters, groups or [])
    if not todo:
        return report

    consumer = browser(settings)
    try:
        dlq_start = {r.partition: r.high for r in partition_ranges(consumer, dlq_topic(topic))}
    finally:
        consumer.close()
    for d in todo:
        marks.add(d.ref, SENDING)
    marks.flush()

    sent: dict[str, tuple[int, int]] = {}
    errors: list[str] = []
    step = progress("sending", len(todo)) if progress else None

    def delivered(ref: str) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
                return
            sent[ref] = (msg.partition(), msg.offset())
            if step is not None:
                step(1)

        return on_delivery

    for d in todo:
        producer.send(
            topic,
            d.value,
            key=d.key,
            headers=[(REDRIVE_HEADER, _link(topic, d))],
            on_delivery=delivered(d.ref),
        )
    _flush(producer)
    for ref, (p, o) in sent.items():
        marks.add(ref, SENT, p, o)
    marks.flush()
    report.replayed = len(sent)
    if errors:
        raise DeliveryFailed(
            f"{len(errors)} of {len(todo)} records were not accepted by Kafka "
            f"(replay again to send them): {errors[:3]}"
        )
    _await_pipelines(settings, topic, report, sent, dlq_start, wait_s, progress)
    return report


def _await_pipelines(
    settings: Settings,
    topic: str,
    report: ReplayReport,
    sent: dict[str, tuple[int, int]],
    dlq_start: dict[int, int],
    wait_s: float,
    progress: Callable[[str, int], Progress] | None,
) -> None:
    """Wait until every group committed past the replayed records, then count those that
    went back to the DLQ."""
    replayed = set(sent.values())
    partitions = sorted({p for p, _ in replayed})
    step = progress("processing", len(replayed)) if progress else None
    handled: set[tuple[int, int]] = set()
    deadline = time.monotonic() + wait_s
    while report.groups:
        done = set(replayed)
        for group in report.groups:
            offsets = committed_offsets(settings, group, topic, partitions)
            done = {(p, o) for p, o in done if offsets.get(p, -1) > o}
        if step is not None and len(done) > len(handled):
            step(len(done) - len(handled))
        handled = done
        if handled == replayed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    back = set()
    consumer = browser(settings)
    try:
        ranges = partition_ranges(consumer, dlq_topic(topic))
        for m in read_records(
            consumer,
            dlq_topic(topic),
            {r.partition: dlq_start.get(r.partition, 0) for r in ranges},
            {r.partition: r.high for r in ranges},
        ):
            d = DeadLetterRecord.from_message(m, topic)
            if d.topic == topic and (d.source_partition, d.source_offset) in replayed:
                back.add((d.source_partition, d.source_offset))
    finally:
        consumer.close()
    report.back_to_dlq = len(back)
    report.stored = len(handled - back)
    report.pending = len(replayed - handled - back)


class _Marks:
    """Writes redrive markers; ``flush`` raises unless every one was acknowledged."""

    def __init__(self, producer: EventProducer, topic: str) -> None:
        self._producer = producer
        self._topic = marker_topic(topic)
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def add(self, ref: str, state: str, p: int = -1, o: int = -1) -> None:
        value = {"state": state, "time_ms": int(time.time() * 1000), "partition": p, "offset": o}
        self._producer.send(
            self._topic, orjson.dumps(value), key=ref.encode(), on_delivery=self._on_delivery
        )

    def flush(self) -> None:
        _flush(self._producer)
        if self._errors:
            raise DeliveryFailed(f"redrive markers were not stored: {self._errors[:3]}")


def _flush(producer: EventProducer, timeout: float = 30.0) -> None:
    if producer.flush(timeout):
        raise DeliveryFailed(f"Kafka did not acknowledge within {timeout:.0f}s: replay again")
