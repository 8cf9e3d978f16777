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
import uuid
from collections import Counter
from dataclasses import dataclass, field

import msgspec
from starlette.requests import Request

from clickflow.collector import envelope
from clickflow.collector.envelope import Rejected, Valid
from clickflow.collector.exceptions import (
    CollectorError,
    PayloadTooLarge,
    PublishFailed,
    UnsupportedMediaType,
)
from clickflow.collector.metrics import EVENTS, PUBLISH_ERRORS
from clickflow.collector.options import CollectorOptions
from clickflow.collector.publisher import KafkaPublisher
from clickflow.collector.tokens import TokenVerifier
from clickflow.domains.ugc.events import EVENT_KINDS, UGC_TOPIC, UgcRecord

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


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(f"Content-Type {media!r}: send application/json or text/plain")


def _kind_label(kind: str | None) -> str:
    return kind if kind in EVENT_KINDS else "unknown"


class Ingestor:
    def __init__(
        self,
        options: CollectorOptions,
        verifier: TokenVerifier,
        publisher: KafkaPublisher,
        topic: str = UGC_TOPIC,
    ) -> None:
        self._options = options
        self._verifier = verifier
        self._publisher = publisher
        self._topic = topic
        self._encoder = msgspec.json.Encoder()

    async def handle(self, request: Request) -> Outcome:
        opts = self._options
        check_content_type(request.headers.get("content-type"))
        body = await read_body(request, opts.max_body_bytes)
        body = envelope.decompress(
            body, request.headers.get("content-encoding"), opts.max_body_bytes
        )
        raws, is_batch = envelope.split_events(body, opts.max_batch_events)
        verdicts: list[Valid | Rejected] = [envelope.validate(r) for r in raws]
        await self._authenticate(verdicts)
        results = await self._publish(verdicts)
        self._count(results)
        return self._outcome(results) if is_batch else self._single_outcome(results[0])

    async def _authenticate(self, verdicts: list[Valid | Rejected]) -> None:
        """Replace each valid event's token by its user_id (in place); invalid token → reject."""
        tokens = {v.token for v in verdicts if isinstance(v, Valid) and v.token is not None}
        users = await self._verifier.user_ids(tokens) if tokens else {}
        for i, v in enumerate(verdicts):
            if isinstance(v, Valid):
                if v.token is None:
                    v.token = ANONYMOUS  # from here on, .token holds the user_id
                elif (user := users.get(v.token)) is None:
                    verdicts[i] = Rejected("token", "invalid or expired token", v.kind)
                else:
                    v.token = user

    async def _publish(self, verdicts: list[Valid | Rejected]) -> list[Verdict]:
        now_ms = time.time_ns() // 1_000_000
        results: list[Verdict] = []
        records: list[tuple[bytes, bytes]] = []
        for i, v in enumerate(verdicts):
            if isinstance(v, Rejected):
                results.append(Refused(i, v.field, v.reason, v.kind))
                continue
            event_id = v.event_id or str(uuid.uuid4())
            user_id = v.token or ANONYMOUS
            record = UgcRecord(v.kind, event_id, user_id, now_ms, v.data)  # type: ignore[arg-type]
            records.append((user_id.encode(), self._encoder.encode(record)))
            results.append(Accepted(i, v.kind, event_id))
        if records:
            errors = await self._publisher.publish(self._topic, records)
            pending = iter(errors)
            for j, r in enumerate(results):
                if isinstance(r, Accepted) and (err := next(pending)) is not None:
                    results[j] = NotStored(r.index, r.event, r.event_id, err)
                    PUBLISH_ERRORS.labels(_error_reason(err)).inc()
        return results

    @staticmethod
    def _count(results: list[Verdict]) -> None:
        counts = Counter(
            (
                _kind_label(r.event),
                "accepted"
                if isinstance(r, Accepted)
                else "rejected"
                if isinstance(r, Refused)
                else "failed",
            )
            for r in results
        )
        for (kind, verdict), n in counts.items():
            EVENTS.labels(kind, verdict).inc(n)

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
