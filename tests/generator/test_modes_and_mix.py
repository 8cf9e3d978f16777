"""Load modes and the event mix (pure logic: no broker needed)."""

from __future__ import annotations

import random

import orjson
import pytest

from clickflow.config import Settings
from clickflow.domains.pageviews.events import InvalidEvent, decode_page_view
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel, parse_schedule
from clickflow.generator.options import GeneratorOptions, Mix


def integrate(model: RateModel, seconds: float, step: float = 0.01) -> list[float]:
    """Events per whole second, by integrating the target rate."""
    per_second = [0.0] * int(seconds)
    t = 0.0
    while t < seconds:
        per_second[int(t)] += model.rate_at(t) * step
        t += step
    return per_second


def test_regular_mode_stays_between_1_and_10_per_second() -> None:
    counts = integrate(RateModel(mode="regular", seed=3), 120)
    assert all(1.0 - 1e-6 <= c <= 10.0 + 1e-6 for c in counts)
    assert max(counts) - min(counts) > 2  # the level moves


def test_burst_mode_sends_100_to_1000_within_2_seconds_periodically() -> None:
    model = RateModel(mode="burst", burst_every=20, seed=5)
    counts = integrate(model, 100)
    for start in range(0, 100, 20):
        burst = counts[start] + counts[start + 1]
        baseline = sum(counts[start + 2 : start + 20]) / 18
        assert 100 <= burst - 2 * baseline <= 1000 + 1e-6, (start, burst)
        assert baseline <= 10 + 1e-6


def test_night_mode_is_one_event_per_10_seconds() -> None:
    assert sum(integrate(RateModel(mode="night"), 100)) == pytest.approx(10, abs=0.01)


def test_fixed_mode_and_schedule_validation() -> None:
    assert RateModel(mode="fixed", rate=50_000).rate_at(3.0) == 50_000
    assert parse_schedule("regular:60,burst:30,night:30") == [
        ("regular", 60.0),
        ("burst", 30.0),
        ("night", 30.0),
    ]
    for bad in ("warp:10", "regular", "regular:-1", "regular:x"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    with pytest.raises(ValueError):
        RateModel(mode="turbo")


def test_mix_percentages_on_100k_events(kafka_bootstrap: str) -> None:
    engine = Engine(
        Settings(kafka_bootstrap=kafka_bootstrap),
        PageViewFactory(),
        "mix-test",
        mix=Mix(broken_share=0.05, duplicate_share=0.01),
        options=GeneratorOptions(seed=11),
    )
    rng = random.Random(1)
    kinds: dict[str, int] = {}
    bounces = durations_ok = valid = dups = 0
    for _ in range(100_000):
        ev, dup = engine.next_event(1_790_000_000.0 + rng.random())
        if dup:
            dups += 1
            continue
        if ev.broken:
            kinds[ev.broken] = kinds.get(ev.broken, 0) + 1
            with pytest.raises(InvalidEvent):
                decode_page_view(ev.value, 1_790_000_100.0)
            continue
        valid += 1
        body = orjson.loads(ev.value)
        bounces += body["is_bounce"]
        ms = body["view_duration_ms"]
        durations_ok += (ms < 5000) if body["is_bounce"] else (10_000 <= ms <= 600_000)
    broken = sum(kinds.values())
    # Binomial tolerance: ~4 standard deviations.
    assert abs(broken / 100_000 - 0.05) < 0.003
    assert abs(dups / 100_000 - 0.01) < 0.0015
    assert set(kinds) == {"empty_page_id", "negative_duration", "malformed_json"}
    assert all(abs(n / broken - 1 / 3) < 0.05 for n in kinds.values())
    assert abs(bounces / valid - 0.10) < 0.006
    assert durations_ok == valid


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        Mix(broken_share=1.5)
    with pytest.raises(ValueError):
        Mix(broken_share=0.7, duplicate_share=0.6)
    with pytest.raises(ValueError):
        GeneratorOptions(pattern="fire-and-forget")
    with pytest.raises(ValueError):
        GeneratorOptions(partitioner="by-moon")


def test_a_finished_runs_rate_does_not_decay_after_it_ended() -> None:
    from clickflow.generator.metrics import Stats

    a = Stats(acked=300, started=100.0, ended=102.0)
    b = Stats(acked=100, started=101.0, ended=103.0)
    assert a.rate() == 150.0
    total = Stats.total([a, b])
    assert (total.started, total.ended, total.acked) == (100.0, 103.0, 400)
    assert total.rate() == pytest.approx(400 / 3)
    assert Stats.total([a, Stats(acked=1, started=100.0)]).ended is None  # one still running
