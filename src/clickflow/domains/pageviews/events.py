"""PageViewEvent, exactly as in seed 000, and its validation.

The seed's struct has no event id; an event's identity is the hash of its content (user,
page, timestamp, duration, agent, ip, region, bounce). A re-sent duplicate has the same bytes
and so the same identity; two different views are never identical to the millisecond.
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import datetime

import msgspec
from msgspec import Struct

PAGEVIEWS_TOPIC = os.environ.get("CLICKFLOW_PAGEVIEWS_TOPIC", "page_views")

MAX_DURATION_MS = 24 * 3600 * 1000  # a view longer than a day is absurd
MAX_FUTURE_S = 3600  # timestamps more than an hour ahead are a broken clock


class PageViewEvent(Struct, forbid_unknown_fields=False):
    page_id: str
    user_id: str
    view_duration_ms: int
    timestamp: datetime
    is_bounce: bool
    user_agent: str = ""
    ip_address: str = ""
    region: str = ""


class InvalidEvent(ValueError):
    """The record cannot be stored; the message is the DLQ reason."""


_decoder = msgspec.json.Decoder(PageViewEvent)


def event_identity(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def decode_page_view(raw: bytes, now: float) -> PageViewEvent:
    """Decode and validate one record; raises InvalidEvent with the reason."""
    try:
        ev = _decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise InvalidEvent(f"schema: {e}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidEvent(f"malformed JSON: {e}") from None
    if not ev.page_id.strip():
        raise InvalidEvent("page_id: empty")
    if not ev.user_id.strip():
        raise InvalidEvent("user_id: empty")
    if ev.view_duration_ms < 0:
        raise InvalidEvent(f"view_duration_ms: negative ({ev.view_duration_ms})")
    if ev.view_duration_ms > MAX_DURATION_MS:
        raise InvalidEvent(f"view_duration_ms: absurd ({ev.view_duration_ms} > 24 h)")
    if ev.timestamp.tzinfo is None:
        raise InvalidEvent("timestamp: no time zone")
    ts = ev.timestamp.timestamp()
    if ts > now + MAX_FUTURE_S:
        raise InvalidEvent(f"timestamp: {ev.timestamp.isoformat()} is in the future")
    if ts < 946684800:  # 2000-01-01
        raise InvalidEvent(f"timestamp: {ev.timestamp.isoformat()} is before 2000")
    if ev.ip_address and not _is_ip(ev.ip_address):
        raise InvalidEvent(f"ip_address: not an IP address ({ev.ip_address[:64]!r})")
    if len(ev.page_id) > 512 or len(ev.user_id) > 256 or len(ev.region) > 64:
        raise InvalidEvent("page_id/user_id/region: too long")
    return ev


def _is_ip(text: str) -> bool:
    """inet_pton is ~5x faster than ipaddress.ip_address and accepts the same forms."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except (OSError, ValueError):
        return False
