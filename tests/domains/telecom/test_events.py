"""The event schema: the factory's valid events pass, every kind of breakage is rejected."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from clickflow.domains.telecom.events import DecodeErrors, EventType, decode
from clickflow.domains.telecom.traffic import TelecomFactory


def test_factory_events_are_valid_and_realistic() -> None:
    f = TelecomFactory(users=200)
    rng = random.Random(7)
    now = time.time()
    events = [decode(f.valid(rng, now).value) for _ in range(5000)]
    kinds = {e.type for e in events}
    assert kinds == set(EventType)
    assert len({e.user_id for e in events}) > 100
    for e in events:
        assert e.ended_at >= e.started_at
        assert e.started_at.timestamp() <= now
        if e.type is EventType.DATA:
            assert e.bytes_down > 0 and e.duration_sec > 0
        elif e.type in (EventType.CALL_IN, EventType.CALL_OUT):
            assert 1 <= e.duration_sec <= 7200 and e.bytes_down == 0
        else:
            assert e.duration_sec == 0 and e.bytes_up == 0


@pytest.mark.parametrize("kind", TelecomFactory.breakages)
def test_every_breakage_is_rejected(kind: str) -> None:
    f = TelecomFactory(users=20)
    rng = random.Random(kind)
    for _ in range(50):
        ev = f.broken(rng, time.time(), kind)
        assert ev.broken == kind
        with pytest.raises(DecodeErrors):
            decode(ev.value)


BASE = {
    "event_id": "550e8400-e29b-41d4-a716-446655440000",
    "source_id": "provider-1",
    "user_id": "123456789",
    "type": "CALL_OUT",
    "started_at": "2025-10-20T12:34:56Z",
    "ended_at": "2025-10-20T12:56:00Z",
    "duration_sec": 127,
    "bytes_up": 0,
    "bytes_down": 0,
    "meta": {"cell": "A1"},
}


def test_the_seed_example_is_valid() -> None:
    e = decode(orjson.dumps(BASE))
    assert e.type is EventType.CALL_OUT and e.meta == {"cell": "A1"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ended_at": "2025-10-20T12:00:00Z"}, "before started_at"),
        ({"duration_sec": -1}, ">= 0"),
        ({"bytes_up": -5}, ">= 0"),
        ({"duration_sec": 5000}, "longer than"),
        ({"started_at": "2025-10-20T12:34:56"}, "timezone"),
        ({"type": "SMS_SENT"}, "SMS"),
        ({"bytes_down": 10}, "call has no data"),
        ({"event_id": ""}, "length"),
        ({"started_at": "1970-01-01T00:00:00Z", "ended_at": "1970-01-01T00:10:00Z"}, "outside"),
        ({"meta": "cell A1"}, "object"),
    ],
)
def test_validation_rules(change: dict, reason: str) -> None:
    with pytest.raises(DecodeErrors, match=reason):
        decode(orjson.dumps({**BASE, **change}))


def test_in_batch_dedup_is_by_source_and_event_id_alone() -> None:
    from clickflow.domains.telecom.store import unique_events

    sms = {**BASE, "type": "SMS_SENT", "duration_sec": 0, "ended_at": BASE["started_at"]}
    corrected = {**sms, "started_at": "2025-10-20T12:34:57Z", "ended_at": "2025-10-20T12:34:57Z"}
    other = {**sms, "event_id": "e-other"}
    events = [decode(orjson.dumps(e)) for e in (sms, corrected, other, sms)]
    kept = unique_events(events)
    assert [(e.event_id, e.started_at) for e in kept] == [
        (events[0].event_id, events[0].started_at),  # the first copy wins
        ("e-other", events[2].started_at),
    ]


@pytest.mark.parametrize("field", ["event_id", "source_id", "user_id"])
def test_nul_in_a_text_field_is_rejected_with_a_reason(field: str) -> None:
    with pytest.raises(DecodeErrors, match=f"{field} contains NUL"):
        decode(orjson.dumps({**BASE, field: "a\x00b"}))


@pytest.mark.parametrize(
    "meta",
    [{"cell": "A\x001"}, {"x\x00": 1}, {"deep": [{"k": ["\x00"]}]}],
)
def test_nul_anywhere_in_meta_is_rejected_with_a_reason(meta: dict) -> None:
    with pytest.raises(DecodeErrors, match="meta contains NUL"):
        decode(orjson.dumps({**BASE, "meta": meta}))


def test_text_that_only_looks_like_an_escaped_nul_is_kept() -> None:
    # A literal backslash followed by "u0000" is ordinary text, for text and for jsonb.
    e = decode(orjson.dumps({**BASE, "event_id": "\\u0000", "meta": {"k": "\\u0000"}}))
    assert e.event_id == "\\u0000" and e.meta == {"k": "\\u0000"}


def test_lone_surrogates_are_rejected_by_the_decoder() -> None:
    raw = orjson.dumps(BASE).replace(b'"provider-1"', b'"provider-1\\ud800"')
    assert b"ud800" in raw
    with pytest.raises(DecodeErrors):
        decode(raw)
