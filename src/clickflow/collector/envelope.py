"""The seed's envelope ``{"event": kind, "token": str | null, "data": {...}}``.

Turns a request body into per-event verdicts: size limits, bounded gunzip, one event or a
JSON array, and each ``data`` validated by the Struct registered for its kind in
``clickflow.domains.ugc.events.EVENT_KINDS`` — a new kind there is accepted here as is.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta, Raw, Struct

from clickflow.collector.exceptions import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from clickflow.domains.ugc.events import EVENT_KINDS

ClientEventId = Annotated[str, Meta(min_length=1, max_length=64)]
Token = Annotated[str, Meta(max_length=8192)]


class Envelope(Struct, forbid_unknown_fields=True):
    event: Annotated[str, Meta(min_length=1, max_length=64)]
    data: Raw
    token: Token | None = None
    event_id: ClientEventId | None = None  # client-supplied: kept, for deduplication


@dataclass(slots=True)
class Valid:
    kind: str
    data: Struct
    token: str | None
    event_id: str | None


@dataclass(slots=True)
class Rejected:
    field: str
    reason: str
    kind: str | None = None


_envelope_decoder = msgspec.json.Decoder(Envelope)
_batch_decoder = msgspec.json.Decoder(list[Raw])
_data_decoders: dict[type[Struct], msgspec.json.Decoder] = {}

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


def split_events(body: bytes, max_batch: int) -> tuple[list[Raw], bool]:
    """The events of a body and whether it was a batch (a JSON array)."""
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            items = _batch_decoder.decode(body)
        except msgspec.DecodeError as e:
            raise MalformedBody(f"body is not a JSON array of events: {e}") from None
        if len(items) > max_batch:
            raise PayloadTooLarge(f"batch of {len(items)} events exceeds {max_batch}")
        if not items:
            raise MalformedBody("empty batch")
        return items, True
    if head == b"{":
        return [Raw(body)], False
    raise MalformedBody("body must be a JSON object (one event) or array (a batch)")


def validate(raw: Raw) -> Valid | Rejected:
    """One event's verdict: its envelope, its kind, and its data against the kind's Struct."""
    try:
        env = _envelope_decoder.decode(raw)
    except msgspec.ValidationError as e:
        return Rejected(*describe(e))
    except msgspec.DecodeError as e:  # only a single event can get here: arrays are parsed
        raise MalformedBody(f"malformed JSON: {e}") from None
    schema = EVENT_KINDS.get(env.event)
    if schema is None:
        known = ", ".join(sorted(EVENT_KINDS))
        return Rejected("event", f"unknown event kind {env.event!r} (known: {known})")
    decoder = _data_decoders.get(schema)
    if decoder is None:
        decoder = _data_decoders[schema] = msgspec.json.Decoder(schema)
    try:
        data = decoder.decode(env.data)
    except msgspec.ValidationError as e:
        return Rejected(*describe(e, "data"), kind=env.event)
    return Valid(env.event, data, env.token, env.event_id)
