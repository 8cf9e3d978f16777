"""PageViewEvent, exactly as in seed 000, and its validation.

The seed's struct has no event id; an event's identity is the hash of its content (user,
page, timestamp, duration, agent, ip, region, bounce). A re-sent duplicate has the same bytes
and so the same identity; two different views are never identical to the millisecond.
"""

from __future__ import annotations

import hashlib
import re
import socket
from datetime import datetime
from itertools import repeat
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from clickflow.domains.pageviews.config import pageviews_config

PAGEVIEWS_TOPIC = pageviews_config().topic

MAX_DURATION_MS = 24 * 3600 * 1000  # a view longer than a day is absurd
MAX_FUTURE_S = 3600  # timestamps more than an hour ahead are a broken clock


# The field rules live in the type, so msgspec checks them in C while decoding (a regex
# pattern would cost more than the rest of the decode: blank ids are checked after it).
# gc=False: an event holds only strings, numbers and a datetime, so it can never be part of
# a reference cycle, and the cyclic collector need not track the events a batch holds.
class PageViewEvent(Struct, forbid_unknown_fields=False, gc=False):
    page_id: Annotated[str, Meta(min_length=1, max_length=512)]
    user_id: Annotated[str, Meta(min_length=1, max_length=256)]
    view_duration_ms: Annotated[int, Meta(ge=0, le=MAX_DURATION_MS)]
    timestamp: Annotated[datetime, Meta(tz=True)]
    is_bounce: bool
    user_agent: str = ""
    ip_address: str = ""
    region: Annotated[str, Meta(max_length=64)] = ""


class InvalidEvent(ValueError):
    """The record cannot be stored; the message is the DLQ reason."""


_decoder = msgspec.json.Decoder(PageViewEvent)
_AT_FIELD = re.compile(r"^(.*) - at `\$\.(\w+)`$")


def event_identity(raw: bytes, _blake2b=hashlib.blake2b) -> str:
    return _blake2b(raw, digest_size=12).hexdigest()


def decode_page_view(raw: bytes, now: float) -> tuple[PageViewEvent, float]:
    """Decode and validate one record: the event and its time as a Unix timestamp.

    ``now`` is the time the record reached Kafka (its timestamp), so that the verdict is the
    same when the record is replayed later. Raises InvalidEvent with the field and the
    reason."""
    try:
        ev = _decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise InvalidEvent(_schema_reason(str(e))) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidEvent(f"malformed JSON: {e}") from None
    return ev, check_page_view(ev, now)


def check_page_view(ev: PageViewEvent, now: float) -> float:
    """The checks msgspec cannot make, on a decoded event: its time as a Unix timestamp, or
    InvalidEvent (see :func:`decode_page_view`)."""
    if ev.page_id.isspace():
        raise InvalidEvent("page_id: empty")
    if ev.user_id.isspace():
        raise InvalidEvent("user_id: empty")
    ts = ev.timestamp.timestamp()
    if ts > now + MAX_FUTURE_S:
        raise InvalidEvent(f"timestamp: {ev.timestamp.isoformat()} is in the future")
    if ts < 946684800:  # 2000-01-01
        raise InvalidEvent(f"timestamp: {ev.timestamp.isoformat()} is before 2000")
    ip = ev.ip_address
    if ip and ip not in _VALID_IPS:
        if not _is_ip(ip):
            raise InvalidEvent(f"ip_address: not an IP address ({ip[:64]!r})")
        if len(_VALID_IPS) >= 100_000:
            _VALID_IPS.clear()
        _VALID_IPS.add(ip)
    return ts


# Decoding many records in one msgspec call (``decode_page_views``). The values are joined
# into one JSON array, each separator a newline and a comma. The joined decode is trusted
# only when it cannot have read across a record's edges:
#
# * every value starts with "{" and ends with "}";
# * no value holds "[" anywhere (PageViewEvent has no list field, so only an ignored unknown
#   field could open an array);
# * the decode succeeds and gives one event per value.
#
# Then every separator sits between two elements of the outer array: a raw newline inside a
# string is invalid JSON, so no separator is inside a string; the "}" before it closes an
# object, whose parent is the outer array (no other array exists) or an object, and inside
# an object a "," must be followed by a key, never by "{". With one element per value, no
# value holds a "," between elements either: each element is exactly one value, and an
# element decodes as PageViewEvent exactly when its value alone does.
_SEP = b"\n,"
_OPEN, _CLOSE, _BRACKET = repeat(b"{"), repeat(b"}"), repeat(b"[")
_many = msgspec.json.Decoder(list[PageViewEvent])
#: Records per joined decode: a record that fails it sends only its group to the one-by-one
#: decode (which finds the bad ones and their reasons). A group's bytes (~45 kB) stay below
#: glibc's trim threshold, so its buffer is reused, not faulted in again each time.
GROUP = 128


def decode_page_views(raws: list[bytes]) -> list[PageViewEvent | None]:
    """Decode many records at once, msgspec's part of :func:`decode_page_view` only: the
    event of each record, or None where the record must be decoded alone (it may be invalid,
    or its group could not be decoded jointly). An event given here is exactly what
    ``decode_page_view`` would decode from its record; :func:`check_page_view` still applies."""
    out: list[PageViewEvent | None] = []
    for start in range(0, len(raws), GROUP):
        out += _decode_group(raws[start : start + GROUP])
    return out


def _decode_group(raws: list[bytes]) -> list[PageViewEvent | None]:
    n = len(raws)
    if any(map(bytes.__contains__, raws, _BRACKET)):
        # Those without one are decoded jointly, the others one by one.
        plain = [i for i, raw in enumerate(raws) if b"[" not in raw]
        out: list[PageViewEvent | None] = [None] * n
        if plain:
            for i, ev in zip(plain, _decode_group([raws[i] for i in plain]), strict=True):
                out[i] = ev
        return out
    if not (all(map(bytes.startswith, raws, _OPEN)) and all(map(bytes.endswith, raws, _CLOSE))):
        return [None] * n
    parts = list(raws)  # one join, brackets included: no second copy of the group
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    try:
        events = _many.decode(_SEP.join(parts))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # and ValidationError
        return [None] * n
    if len(events) != n:
        return [None] * n
    return events


# Addresses already checked: a visitor sends many views from one address, and a set lookup
# costs a quarter of inet_pton with its Python call around it.
_VALID_IPS: set[str] = set()


def _schema_reason(message: str) -> str:
    """msgspec's "Expected `int` >= 0 - at `$.view_duration_ms`" as "field: reason"."""
    match = _AT_FIELD.match(message)
    if match is None:
        return f"schema: {message}"  # e.g. "Object missing required field `page_id`"
    reason, name = match.groups()
    if "length >= 1" in reason:
        reason = "empty"
    elif name == "view_duration_ms" and "<=" in reason:
        reason = f"absurd (more than 24 h): {reason}"
    elif name == "view_duration_ms" and ">=" in reason:
        reason = f"negative: {reason}"
    elif name == "timestamp" and "timezone" in reason:
        reason = "no time zone"
    return f"{name}: {reason}"


def _is_ip(text: str) -> bool:
    """inet_pton is ~5x faster than ipaddress.ip_address and accepts the same forms."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except (OSError, ValueError):
        return False
