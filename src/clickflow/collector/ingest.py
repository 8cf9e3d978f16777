"""What ``POST /v1/events`` does, apart from HTTP: limits, validation, authentication,
enrichment, publishing, and the verdicts that go back to the client.

Records are keyed by ``user_id``, not by the event kind as the seed suggests: Kafka keeps
order per partition, and keying by user keeps each user's ``page_view_start`` and
``page_view_end`` in one partition, in order, so the pairing step sees them together; it also
spreads load over partitions, while a key per kind would put all traffic of the dominant kind
on one partition. Anonymous events share the key "anonymous"; they have no user to pair on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.types import Receive

from clickflow.collector import envelope
from clickflow.collector.config import CollectorConfig
from clickflow.collector.envelope import Event, Rejected
from clickflow.collector.exceptions import (
    CollectorError,
    PayloadTooLarge,
    PublishFailed,
    UnsupportedMediaType,
)
from clickflow.collector.ids import EventIds
from clickflow.collector.kinds import collected
from clickflow.collector.metrics import EVENTS, PUBLISH_ERRORS
from clickflow.collector.publisher import KafkaPublisher
from clickflow.collector.tokens import TokenVerifier

ANONYMOUS = "anonymous"
ACCEPTED_TYPES = frozenset({"", "application/json", "text/plain"})  # text/plain: sendBeacon


class Accepted(msgspec.Struct, tag="accepted", tag_field="status"):
    index: int
    event: str
    event_id: str


class Refused(msgspec.Struct, tag="rejected", tag_field="status"):
    """The event is invalid: fix ``field`` (a dotted path, e.g. ``data.page_type``)."""

    index: int
    field: str
    reason: str
    event: str | None = None


class NotStored(msgspec.Struct, tag="failed", tag_field="status"):
    """Valid, but Kafka did not acknowledge it: retry with the same event_id."""

    index: int
    event: str
    event_id: str
    reason: str


Verdict = Accepted | Refused | NotStored


class BatchResult(msgspec.Struct):
    accepted: int
    rejected: int
    failed: int
    results: list[Verdict]


@dataclass
class Outcome:
    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


async def read_body(receive: Receive, declared_length: bytes | None, limit: int) -> bytes:
    """The raw body from the ASGI ``receive``, refused with 413 as soon as it passes
    ``limit`` bytes (at once when Content-Length says so)."""
    if declared_length and declared_length.isdigit() and int(declared_length) > limit:
        raise PayloadTooLarge(f"body of {declared_length.decode()} bytes exceeds {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_content_type(value: bytes | None) -> None:
    media = (value or b"").decode("latin-1").split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(f"Content-Type {media!r}: send application/json or text/plain")


def _kind_label(kind: str | None) -> str:
    return kind if kind in collected().kinds else "unknown"


class Ingestor:
    def __init__(
        self,
        options: CollectorConfig,
        verifier: TokenVerifier,
        publisher: KafkaPublisher,
        topic: str | None = None,
    ) -> None:
        """``topic``: where the events go (default: the collected domain's topic)."""
        domain = collected()
        self._options = options
        self._verifier = verifier
        self._publisher = publisher
        self._topic = topic or domain.topic().name
        self._record = domain.record
        self._encoder = msgspec.json.Encoder()
        self._ids = EventIds()
        self._event_counters: dict[tuple[str, str], Any] = {}

    async def handle(self, headers: dict[bytes, bytes], receive: Receive) -> Outcome:
        """``headers``: the request's, names in lower case (as ASGI gives them)."""
        opts = self._options
        check_content_type(headers.get(b"content-type"))
        body = await read_body(receive, headers.get(b"content-length"), opts.max_body_bytes)
        encoding = headers.get(b"content-encoding")
        body = envelope.decompress(
            body, encoding.decode("latin-1") if encoding else None, opts.max_body_bytes
        )
        verdicts, is_batch = envelope.parse(body, opts.max_batch_events)
        users = await self._authenticate(verdicts)
        results = await self._publish(verdicts, users)
        return self._outcome(results) if is_batch else self._single_outcome(results[0])

    async def _authenticate(self, verdicts: list[Event | Rejected]) -> list[str]:
        """The user_id of each event ("anonymous" without a token); an event whose token is
        invalid is replaced by its rejection, in place."""
        tokens = {v.token for v in verdicts if isinstance(v, Event) and v.token is not None}
        if not tokens:
            return [ANONYMOUS] * len(verdicts)
        by_token = await self._verifier.user_ids(tokens)
        users = []
        for i, v in enumerate(verdicts):
            user = ANONYMOUS
            if isinstance(v, Event) and v.token is not None:
                found = by_token.get(v.token)
                if found is None:
                    verdicts[i] = Rejected("token", "invalid or expired token", v.kind)
                else:
                    user = found
            users.append(user)
        return users

    async def _publish(self, verdicts: list[Event | Rejected], users: list[str]) -> list[Verdict]:
        """Publish the valid events; a verdict per event. (A tight loop: it runs for every
        event of every batch.)"""
        now_ms = time.time_ns() // 1_000_000
        results: list[Verdict] = []
        records: list[tuple[bytes, bytes]] = []
        add_result, add_record = results.append, records.append
        encode, new_id, make_record = self._encoder.encode, self._ids.next, self._record
        accepted: dict[str, int] = {}
        for i, v in enumerate(verdicts):
            if v.__class__ is Rejected:
                add_result(Refused(i, v.field, v.reason, v.kind))  # type: ignore[union-attr]
                continue
            kind, event_id, user_id = v.kind, v.event_id or new_id(), users[i]  # type: ignore[union-attr]
            record = make_record(kind, event_id, user_id, now_ms, v.data)  # type: ignore[union-attr]
            add_record((user_id.encode(), encode(record)))
            add_result(Accepted(i, kind, event_id))
            accepted[kind] = accepted.get(kind, 0) + 1
        failed: dict[str, int] = {}
        if records:
            errors = await self._publisher.publish(self._topic, records)
            if any(e is not None for e in errors):
                pending = iter(errors)
                for j, r in enumerate(results):
                    if isinstance(r, Accepted) and (err := next(pending)) is not None:
                        results[j] = NotStored(r.index, r.event, r.event_id, err)
                        PUBLISH_ERRORS.labels(_error_reason(err)).inc()
                        accepted[r.event] -= 1
                        failed[r.event] = failed.get(r.event, 0) + 1
        self._count("accepted", accepted)
        self._count("failed", failed)
        if len(records) < len(results):
            rejected: dict[str, int] = {}
            for r in results:
                if isinstance(r, Refused):
                    label = _kind_label(r.event)
                    rejected[label] = rejected.get(label, 0) + 1
            self._count("rejected", rejected)
        return results

    def _count(self, verdict: str, by_kind: dict[str, int]) -> None:
        for kind, n in by_kind.items():
            if not n:
                continue
            child = self._event_counters.get((kind, verdict))
            if child is None:
                child = self._event_counters[(kind, verdict)] = EVENTS.labels(kind, verdict)
            child.inc(n)

    @staticmethod
    def _single_outcome(r: Verdict) -> Outcome:
        if isinstance(r, Accepted):
            return Outcome(202, {"status": "accepted", "event": r.event, "event_id": r.event_id})
        if isinstance(r, NotStored):
            return error_outcome(PublishFailed(r.reason))
        status = 401 if r.field == "token" else 422
        return Outcome(status, {"status": "rejected", "field": r.field, "reason": r.reason})

    @staticmethod
    def _outcome(results: list[Verdict]) -> Outcome:
        accepted = sum(isinstance(r, Accepted) for r in results)
        failed = sum(isinstance(r, NotStored) for r in results)
        rejected = len(results) - accepted - failed
        body = BatchResult(accepted, rejected, failed, results)
        if failed:
            return Outcome(503, body, {"Retry-After": "1"})
        if accepted:
            return Outcome(202, body)
        all_token = all(isinstance(r, Refused) and r.field == "token" for r in results)
        return Outcome(401 if all_token else 422, body)


def error_outcome(e: CollectorError) -> Outcome:
    if e.status == 503:
        body = {"status": "failed", "reason": e.reason}
    else:
        body = {"status": "rejected", "field": e.field or "body", "reason": e.reason}
    return Outcome(e.status, body, {"Retry-After": "1"} if e.status == 503 else {})


def _error_reason(err: str) -> str:
    if "queue is full" in err:
        return "queue_full"
    if "in time" in err or "timed out" in err.lower():
        return "timeout"
    return "broker_error"
