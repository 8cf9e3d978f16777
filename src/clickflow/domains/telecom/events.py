"""The telecom usage event (seed 004): one msgspec Struct, shared by the pipelines, the
generator and the verify mode.

Decoding is strict: unknown types, wrong JSON types, missing fields, naive timestamps and
negative numbers are rejected by msgspec; the cross-field rules (``ended_at >= started_at``,
the duration fits in the interval, SMS carry no duration or bytes, calls carry no bytes)
are checked in ``__post_init__``. Text PostgreSQL cannot store is rejected too
(:class:`UnstorableText`): NUL in any text field, ``\\u0000`` anywhere in ``meta`` (jsonb
refuses it: "unsupported Unicode escape sequence"). Lone surrogates never get this far:
msgspec refuses them while decoding. A rejected record goes to the DLQ with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct


class EventType(StrEnum):
    CALL_OUT = "CALL_OUT"
    CALL_IN = "CALL_IN"
    SMS_SENT = "SMS_SENT"
    SMS_RECEIVED = "SMS_RECEIVED"
    DATA = "DATA"


CALLS = frozenset({EventType.CALL_OUT, EventType.CALL_IN})
SMS = frozenset({EventType.SMS_SENT, EventType.SMS_RECEIVED})

Id = Annotated[str, Meta(min_length=1, max_length=64)]
Count = Annotated[int, Meta(ge=0, le=2**62)]
Seconds = Annotated[int, Meta(ge=0, le=31 * 86400)]
AwareTime = Annotated[datetime, Meta(tz=True)]

# Events outside this window are rejected: a year-9999 timestamp would otherwise make the
# ingestor create a partition for it.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
#: slack between ``duration_sec`` and ``ended_at - started_at`` (rounding by the source)
DURATION_SLACK_S = 1


class TelecomEvent(Struct, kw_only=True):
    event_id: Id
    source_id: Id
    user_id: Id
    type: EventType
    started_at: AwareTime
    ended_at: AwareTime
    duration_sec: Seconds
    bytes_up: Count
    bytes_down: Count
    meta: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if not EARLIEST <= self.started_at < LATEST:
            raise ValueError("started_at is outside 2000-01-01..2100-01-01")
        span = (self.ended_at - self.started_at).total_seconds()
        if span < 0:
            raise ValueError("ended_at is before started_at")
        if self.duration_sec > span + DURATION_SLACK_S:
            raise ValueError("duration_sec is longer than ended_at - started_at")
        if self.type in SMS and (self.duration_sec or self.bytes_up or self.bytes_down):
            raise ValueError("an SMS has no duration or bytes")
        if self.type in CALLS and (self.bytes_up or self.bytes_down):
            raise ValueError("a call has no data bytes")

    @property
    def key(self) -> tuple[str, str]:
        """The deduplication key (seed 004): the same event re-sent with another
        ``started_at`` is still the same event."""
        return (self.source_id, self.event_id)


class UnstorableText(ValueError):
    """A text field holds what PostgreSQL cannot store (NUL in text or in jsonb)."""


_decoder = msgspec.json.Decoder(TelecomEvent)
_encoder = msgspec.json.Encoder()
TEXT_FIELDS = ("event_id", "source_id", "user_id")


def decode(raw: bytes) -> TelecomEvent:
    """Decode and validate one record; raises ``msgspec.ValidationError`` / ``DecodeError``
    or :class:`UnstorableText`."""
    event = _decoder.decode(raw)
    # JSON can only carry NUL as the escape \u0000 (a raw control byte is a decode error):
    # without one in the record, no field holds NUL, and the usual record costs one scan.
    if b"\\u0000" in raw:
        _check_nul(event)
    return event


def _check_nul(event: TelecomEvent) -> None:
    for name in TEXT_FIELDS:
        if "\x00" in getattr(event, name):
            raise UnstorableText(f"{name} contains NUL (U+0000), which PostgreSQL cannot store")
    if _has_nul(event.meta):
        raise UnstorableText("meta contains NUL (U+0000), which PostgreSQL jsonb cannot store")


def _has_nul(value: Any) -> bool:
    """Is there a NUL in any string (key or value) of a decoded JSON value?"""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def meta_json(event: TelecomEvent) -> str:
    """``meta`` as JSON text for jsonb (msgspec: integers of any size, unlike orjson)."""
    return _encoder.encode(event.meta).decode() if event.meta else "{}"


def encode(event: TelecomEvent) -> bytes:
    return _encoder.encode(event)


# msgspec raises UnicodeDecodeError for a string that is not UTF-8 and RecursionError for JSON
# nested thousands deep (in ``meta``): both are bad records, not a failing sink.
DecodeErrors = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    UnicodeDecodeError,
    RecursionError,
    UnstorableText,
)
