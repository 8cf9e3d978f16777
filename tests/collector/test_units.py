"""Small pure parts: event ids, error descriptions, bounded gunzip."""

from __future__ import annotations

import gzip
import uuid

import msgspec
import pytest

from clickflow.collector.envelope import decompress, describe, parse
from clickflow.collector.exceptions import MalformedBody, PayloadTooLarge
from clickflow.collector.ids import EventIds


def test_event_ids_are_unique_uuids() -> None:
    a, b = EventIds(), EventIds()
    ids = [a.next() for _ in range(10_000)] + [b.next() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids[:100] + ids[-100:])


class Inner(msgspec.Struct):
    x: int


class Outer(msgspec.Struct):
    inner: Inner


def test_describe_names_nested_fields() -> None:
    for raw, field in [
        (b'{"inner": {"x": "a"}}', "data.inner.x"),
        (b'{"inner": {}}', "data.inner.x"),
    ]:
        with pytest.raises(msgspec.ValidationError) as e:
            msgspec.json.decode(raw, type=Outer)
        assert describe(e.value, "data")[0] == field


def test_decompress_bounds() -> None:
    body = b'{"a": 1}'
    assert decompress(gzip.compress(body), "gzip", 100) == body
    assert decompress(body, None, 100) == body
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b" " * 101), "gzip", 100)
    with pytest.raises(MalformedBody):
        decompress(gzip.compress(body)[:-4], "gzip", 100)  # truncated


def test_parse_valid_batch_in_one_pass_and_invalid_one_by_one() -> None:
    click = {"event": "element_click", "data": {"element_type": "a", "page_type": "b"}}
    events, is_batch = parse(msgspec.json.encode([click, click]), 10)
    assert is_batch and [e.kind for e in events] == ["element_click"] * 2
    events, _ = parse(msgspec.json.encode([click, {"event": "element_click"}]), 10)
    assert events[0].kind == "element_click" and events[1].field == "data"
