"""The click schema and the traffic factory, without servers."""

from __future__ import annotations

import random
import time

import pytest

from clickflow.domains.adclicks.events import RejectedClick, decode_click
from clickflow.domains.adclicks.traffic import AdClickFactory


def test_every_generated_click_is_valid_and_every_breakage_is_rejected() -> None:
    f = AdClickFactory(ads=1000, seed=3)
    rng = random.Random(3)
    now = time.time()
    now_ms = int(now * 1000)
    for _ in range(2000):
        ev = f.valid(rng, now)
        c = decode_click(ev.value, now_ms, 300_000)
        assert c.click_id == ev.identity and ev.key == ev.identity.encode()
    for kind in f.breakages:
        for _ in range(20):
            with pytest.raises(RejectedClick):
                decode_click(f.broken(rng, now, kind).value, now_ms, 300_000)


def test_future_clicks_are_rejected_but_small_clock_skew_is_not() -> None:
    f = AdClickFactory(ads=10, seed=1)
    now = time.time()
    ev = f.valid(random.Random(1), now + 60)  # a client clock one minute ahead
    decode_click(ev.value, int(now * 1000), 300_000)
    ev = f.valid(random.Random(1), now + 600)
    with pytest.raises(RejectedClick) as e:
        decode_click(ev.value, int(now * 1000), 300_000)
    assert e.value.kind == "future"


def test_traffic_is_skewed_towards_a_few_hot_ads_and_has_late_clicks() -> None:
    f = AdClickFactory(ads=10_000, late_share=0.1, seed=5)
    rng = random.Random(5)
    now = time.time()
    evs = [f.valid(rng, now) for _ in range(20_000)]
    counts: dict[str, int] = {}
    for e in evs:
        counts[e.truth["ad_id"]] = counts.get(e.truth["ad_id"], 0) + 1
    top10 = sum(sorted(counts.values(), reverse=True)[:10])
    assert top10 > 0.2 * len(evs)  # 0.1% of the ads get over a fifth of the clicks
    late = [e for e in evs if e.truth["late"]]
    assert 0.08 < len(late) / len(evs) < 0.12
    assert all(now * 1000 - e.truth["click_timestamp"] >= 5000 for e in late)
