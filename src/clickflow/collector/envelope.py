"""The seed's envelope ``{"event": kind, "token": str | null, "data": {...}}``.

Turns a request body into per-event verdicts: size limits, bounded gunzip, one event or a
JSON array, and each ``data`` validated by the Struct registered for its kind in the
collected domain's ``KINDS`` (``domains/<d>/collect.py``, found by ``kinds.collected()``) — a
new kind there is accepted here as is.

Speed: one envelope Struct per kind is derived from ``KINDS`` (a tagged union on
``event``), so a whole valid batch decodes in one msgspec call (~0.5 µs per event). Only
when that fails is each event decoded on its own, to give each its verdict.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Annotated, ClassVar, Union

import msgspec
from msgspec import Meta, Raw, Struct

from clickflow.collector.exceptions import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from clickflow.collector.kinds import collected

ClientEventId = Annotated[str, Meta(min_length=1, max_length=64)]
Token = Annotated[str, Meta(max_length=8192)]
Kind = Annotated[str, Meta(min_length=1, max_length=64)]


class Event(Struct, forbid_unknown_fields=True, tag_field="event"):
    """A valid event. Subclasses (one per kind, ``<Kind>Event``) are made by ``schemas()``;
    the kind is the tag, also readable as ``event.kind``."""

    kind: ClassVar[str]


class Envelope(Struct, forbid_unknown_fields=True):
    """The envelope alone, to name what is wrong with an invalid event."""

    event: Kind
    data: Raw
    token: Token | None = None
    event_id: ClientEventId | None = None  # client-supplied: kept, for deduplication


@dataclass(slots=True)
class Rejected:
    field: str
    reason: str
    kind: str | None = None


class Schemas:
    """The envelope types for the current ``KINDS`` and their decoders."""

    def __init__(self, kinds: dict[str, type[Struct]]) -> None:
        self.key = tuple(kinds.items())
        self.by_kind: dict[str, type[Event]] = {
            kind: msgspec.defstruct(
                f"{schema.__name__}Event",
                [
                    ("data", schema),
                    ("token", Token | None, None),
                    ("event_id", ClientEventId | None, None),
                ],
                bases=(Event,),
                tag=kind,
                namespace={"kind": kind},
            )
            for kind, schema in kinds.items()
        }
        union = Union[tuple(self.by_kind.values())]  # noqa: UP007 - built at run time
        self.one = msgspec.json.Decoder(union)
        self.batch = msgspec.json.Decoder(list[union])  # type: ignore[valid-type]
        self.data = {kind: msgspec.json.Decoder(s) for kind, s in kinds.items()}


_schemas: Schemas | None = None


def schemas() -> Schemas:
    """Rebuilt when ``KINDS`` changed (a kind added at run time, e.g. in a test)."""
    global _schemas
    kinds = collected().kinds
    if _schemas is None or _schemas.key != tuple(kinds.items()):
        _schemas = Schemas(kinds)
    return _schemas


_envelope_decoder = msgspec.json.Decoder(Envelope)
_batch_decoder = msgspec.json.Decoder(list[Raw])

_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED_FIELD = re.compile(r"field `([^`]+)`")


def describe(err: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field, reason) from a msgspec message such as
    "Expected `str`, got `int` - at `$.page_type`" or "Object missing required field `x`"."""
    m = _AT.match(str(err))
    assert m is not None  # the pattern matches any string
    reason, path = m["reason"], (m["path"] or "").lstrip(".")
    named = _NAMED_FIELD.search(reason)
    if named:
        path = f"{path}.{named[1]}" if path else named[1]
    field = ".".join(p for p in (prefix, path) if p)
    return field or "$", reason


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body as sent before compression. gzip is inflated at most to ``limit`` + 1 bytes,
    so a small bomb costs at most that much memory before it is refused with 413."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (use gzip)")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise MalformedBody(f"invalid gzip body: {e}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes after decompression")
    if not inflater.eof or inflater.unused_data:
        raise MalformedBody("invalid gzip body: truncated or trailing data")
    return out


def parse(body: bytes, max_batch: int) -> tuple[list[Event | Rejected], bool]:
    """A verdict per event of the body, and whether the body was a batch (a JSON array)."""
    try:
        return _parse(body, max_batch)
    except RecursionError:  # msgspec's answer to JSON nested thousands deep
        raise MalformedBody("malformed JSON: nested too deeply") from None
    except UnicodeDecodeError as e:  # msgspec's answer to a string that is not UTF-8
        raise MalformedBody(f"malformed JSON: invalid UTF-8 at byte {e.start}") from None


def _parse(body: bytes, max_batch: int) -> tuple[list[Event | Rejected], bool]:
    s = schemas()
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            events: list[Event | Rejected] = s.batch.decode(body)
        except msgspec.ValidationError:  # some event is invalid: judge each on its own
            try:
                raws = _batch_decoder.decode(body)
            except msgspec.ValidationError as e:
                raise MalformedBody(f"body is not a JSON array of events: {e}") from None
            _check_length(len(raws), max_batch)
            return [validate(r, s) for r in raws], True
        except msgspec.DecodeError as e:
            raise MalformedBody(f"malformed JSON: {e}") from None
        _check_length(len(events), max_batch)
        return events, True
    if head == b"{":
        try:
            return [s.one.decode(body)], False
        except msgspec.ValidationError:
            return [validate(Raw(body), s)], False
        except msgspec.DecodeError as e:
            raise MalformedBody(f"malformed JSON: {e}") from None
    raise MalformedBody("body must be a JSON object (one event) or array (a batch)")


def _check_length(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise PayloadTooLarge(f"batch of {n} events exceeds {max_batch}")
    if n == 0:
        raise MalformedBody("empty batch")


def validate(raw: Raw, s: Schemas | None = None) -> Event | Rejected:
    """One event's verdict: its envelope, its kind, and its data against the kind's Struct."""
    s = s or schemas()
    try:
        env = _envelope_decoder.decode(raw)
    except msgspec.ValidationError as e:
        return Rejected(*describe(e))
    decoder = s.data.get(env.event)
    if decoder is None:
        known = ", ".join(sorted(s.data))
        return Rejected("event", f"unknown event kind {env.event!r} (known: {known})")
    try:
        data = decoder.decode(env.data)
    except msgspec.ValidationError as e:
        return Rejected(*describe(e, "data"), kind=env.event)
    return s.by_kind[env.event](data=data, token=env.token, event_id=env.event_id)
