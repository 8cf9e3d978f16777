"""Test streams for adclicks: generated clicks with late ones, copies and broken records, and
the ground truth computed from them independently of the pipeline."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from clickflow.config import Settings
from clickflow.domains.adclicks.traffic import AdClickFactory
from clickflow.generator.factory import GeneratedEvent
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer

MINUTE_MS = 60_000


@dataclass
class Stream:
    sends: list[tuple[GeneratedEvent, int | None]] = field(default_factory=list)
    valid: dict[str, dict] = field(default_factory=dict)  # click_id -> truth
    broken: int = 0
    copies: int = 0
    late: int = 0
    sent: int = 0  # records acknowledged by the broker

    def count(self, ad_id: str | None = None, start_ms: int = 0, end_ms: int = 2**62, **filt):
        n = 0
        for t in self.valid.values():
            if ad_id is not None and t["ad_id"] != ad_id:
                continue
            if not start_ms <= t["click_timestamp"] < end_ms:
                continue
            if all(t[k] in v for k, v in filt.items()):
                n += 1
        return n

    def top(self, n: int, start_ms: int, end_ms: int, **filt) -> list[tuple[str, int]]:
        c: Counter[str] = Counter()
        for t in self.valid.values():
            if start_ms <= t["click_timestamp"] < end_ms and all(
                t[k] in v for k, v in filt.items()
            ):
                c[t["ad_id"]] += 1
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    @property
    def span_ms(self) -> tuple[int, int]:
        ts = [t["click_timestamp"] for t in self.valid.values()]
        start = min(ts) // MINUTE_MS * MINUTE_MS
        return start, (max(ts) // MINUTE_MS + 1) * MINUTE_MS


def make_stream(
    n: int,
    seed: int,
    topic: str,
    minutes: float = 4.0,
    late_share: float = 0.08,
    copy_share: float = 0.04,
    broken_share: float = 0.02,
    ads: int = 300,
) -> Stream:
    """``n`` records whose event times walk through the last ``minutes`` minutes, in order
    (late clicks lag behind by 5..150 s). A copy is the same record sent again; one in four
    copies is forced onto a random partition (a round-robin partitioner's doing)."""
    factory = AdClickFactory(
        ads=ads, users=2000, late_share=late_share, late_delay_s=(5, 150), topic=topic, seed=seed
    )
    rng = random.Random(seed)
    s = Stream()
    t0 = time.time() - minutes * 60
    recent: list[GeneratedEvent] = []
    for i in range(n):
        now = t0 + minutes * 60 * i / n
        r = rng.random()
        if r < copy_share and recent:
            ev = rng.choice(recent)
            part = rng.randrange(4) if rng.random() < 0.25 else None
            s.sends.append((ev, part))
            s.copies += 1
        elif r < copy_share + broken_share:
            s.sends.append((factory.broken(rng, now, rng.choice(factory.breakages)), None))
            s.broken += 1
        else:
            ev = factory.valid(rng, now)
            s.sends.append((ev, None))
            assert ev.truth is not None
            s.valid[ev.identity] = ev.truth
            s.late += ev.truth["late"]
            recent.append(ev)
            if len(recent) > 500:
                recent.pop(0)
    return s


def produce(settings: Settings, topic: str, sends: list[tuple[GeneratedEvent, int | None]]):
    """Send in order; returns {partition: last offset + 1}."""
    p = EventProducer(producer_config(settings))
    ends: dict[int, int] = {}

    def done(err, msg) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for ev, part in sends:
        p.send(topic, ev.value, key=ev.key, partition=part, on_delivery=done)
    assert p.flush(30) == 0
    return ends
