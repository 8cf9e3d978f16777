"""The UGC event factory: valid events pass the pipeline's validation, broken ones do not,
and page-view halves come in pairs with ends after their starts (or on purpose before)."""

from __future__ import annotations

import random

import orjson
import pytest

from clickflow.domains.ugc.pipeline import InvalidRecord, decode_record
from clickflow.domains.ugc.traffic import UgcEventFactory


def test_valid_events_decode_and_page_views_pair_up() -> None:
    f = UgcEventFactory(users=20, seed=4)
    rng = random.Random(4)
    events = [f.valid(rng, 1_764_000_000 + i) for i in range(3000)] + f.pending()
    kinds = set()
    halves: dict[tuple, list[str]] = {}
    for ev in events:
        rec, _ = decode_record(ev.value)
        kinds.add(rec.event)
        assert ev.key == rec.user_id.encode()
        if rec.event.startswith("page_view"):
            halves.setdefault((rec.user_id, rec.data.page_view_id), []).append(rec.event[10:])
    assert kinds == {
        "element_click", "page_view_start", "page_view_end",
        "quality_change", "video_complete", "search_filter",
    }  # fmt: skip
    shapes = {tuple(h) for h in halves.values()}
    assert ("start", "end") in shapes  # in order
    assert ("end", "start") in shapes  # the end first
    assert ("start",) in shapes  # never ends
    assert any(len(h) == 3 for h in halves.values())  # a retried half
    assert all("start" in h for h in halves.values())


@pytest.mark.parametrize("breakage", UgcEventFactory.breakages)
def test_every_breakage_is_rejected_with_a_reason(breakage: str) -> None:
    f = UgcEventFactory(users=5)
    ev = f.broken(random.Random(1), 1_764_000_000, breakage)
    assert ev.broken == breakage
    with pytest.raises(InvalidRecord) as e:
        decode_record(ev.value)
    assert e.value.reason
    if breakage != "malformed_json":
        orjson.loads(ev.value)
