"""Every bad page view gets a DLQ reason that names the field (pure logic, no servers)."""

from __future__ import annotations

import orjson
import pytest

from clickflow.domains.pageviews import events
from clickflow.domains.pageviews.events import InvalidEvent, decode_page_view

NOW = 1_795_000_000.0  # 2026-11-18
GOOD = {
    "page_id": "/catalog/1",
    "user_id": "u1",
    "view_duration_ms": 1500,
    "timestamp": "2026-11-18T08:00:00.123Z",
    "is_bounce": False,
    "user_agent": "Mozilla/5.0",
    "ip_address": "203.0.113.7",
    "region": "eu-west",
}


def test_a_good_event_decodes_with_its_unix_time() -> None:
    ev, ts = decode_page_view(orjson.dumps(GOOD), NOW)
    assert ev.page_id == "/catalog/1"
    assert ts == pytest.approx(1_794_988_800.123)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"page_id": ""}, "page_id: empty"),
        ({"page_id": "   "}, "page_id: empty"),
        ({"user_id": ""}, "user_id: empty"),
        ({"view_duration_ms": -1}, "view_duration_ms: negative"),
        ({"view_duration_ms": 25 * 3600 * 1000}, "view_duration_ms: absurd"),
        ({"view_duration_ms": "12"}, "view_duration_ms: Expected `int`, got `str`"),
        ({"timestamp": "2026-11-18T08:00:00"}, "timestamp: no time zone"),
        ({"timestamp": "2027-01-01T00:00:00Z"}, "is in the future"),
        ({"timestamp": "1999-12-31T23:59:59Z"}, "is before 2000"),
        ({"timestamp": "yesterday"}, "timestamp: Invalid RFC3339"),
        ({"ip_address": "999.1.1.1"}, "ip_address: not an IP address"),
        ({"region": "x" * 65}, "region: Expected `str` of length <= 64"),
        ({"is_bounce": "no"}, "is_bounce: Expected `bool`"),
    ],
)
def test_bad_fields_are_named_in_the_reason(change: dict, reason: str) -> None:
    with pytest.raises(InvalidEvent) as e:
        decode_page_view(orjson.dumps({**GOOD, **change}), NOW)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"page_id": "/a"', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "schema: Expected `object`"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "timestamp"}), "`timestamp`"),
    ],
)
def test_malformed_records_are_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as e:
        decode_page_view(raw, NOW)
    assert reason in str(e.value)


def test_remembered_addresses_stay_bounded_and_never_admit_a_bad_one() -> None:
    for i in range(100_001):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        decode_page_view(orjson.dumps({**GOOD, "ip_address": ip}), NOW)
    assert len(events._VALID_IPS) <= 100_000
    with pytest.raises(InvalidEvent, match="ip_address"):
        decode_page_view(orjson.dumps({**GOOD, "ip_address": "10.0.0.256"}), NOW)
