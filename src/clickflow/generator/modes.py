"""Load modes: how many events per second the generator aims at, as a function of time.

* ``regular``: a steady 1–10 events/s (a new level every few seconds);
* ``burst``: the regular flow plus, every ``burst_every`` seconds, 100–1000 events within 2 s;
* ``night``: 1 event per 10 s;
* ``fixed``: a fixed target rate (load tests, e.g. 50,000/s);
* a schedule combines them: ``regular:60,burst:30,night:30`` cycles through the list.

``share`` scales every mode: each of N worker processes runs the whole profile at 1/N, so
together they produce the profile once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MODES = ("regular", "burst", "night", "fixed")


@dataclass
class RateModel:
    mode: str = "regular"
    rate: float = 1000.0  # for mode "fixed"
    burst_every: float = 20.0
    burst_seconds: float = 2.0
    burst_min: int = 100
    burst_max: int = 1000
    regular_min: float = 1.0
    regular_max: float = 10.0
    regular_step: float = 5.0
    seed: int = 0
    share: float = 1.0  # this generator's share of the traffic (1/N for N workers)

    def __post_init__(self) -> None:
        validate_mode(self.mode)
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {self.share!r}")
        self._rng = random.Random(self.seed)
        self._level_until = -1.0
        self._level = self.regular_min
        self._burst_index = -1
        self._burst_rate = 0.0

    def _regular(self, t: float) -> float:
        if t >= self._level_until:
            self._level = self._rng.uniform(self.regular_min, self.regular_max)
            self._level_until = t + self.regular_step
        return self._level

    def rate_at(self, t: float) -> float:
        """Target events/s at ``t`` seconds after the mode started (times ``share``)."""
        return self._total_rate_at(t) * self.share

    def _total_rate_at(self, t: float) -> float:
        if self.mode == "fixed":
            return self.rate
        if self.mode == "night":
            return 0.1
        base = self._regular(t)
        if self.mode == "regular":
            return base
        index, offset = divmod(t, self.burst_every)
        if offset < self.burst_seconds:
            if int(index) != self._burst_index:
                self._burst_index = int(index)
                size = self._rng.randint(self.burst_min, self.burst_max)
                self._burst_rate = size / self.burst_seconds
            return base + self._burst_rate
        return base


def validate_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")


def parse_schedule(text: str) -> list[tuple[str, float]]:
    """``"regular:60,burst:30"`` -> ``[("regular", 60.0), ("burst", 30.0)]``."""
    steps: list[tuple[str, float]] = []
    for part in text.split(","):
        name, _, seconds = part.strip().partition(":")
        validate_mode(name)
        try:
            duration = float(seconds)
        except ValueError:
            raise ValueError(f"schedule step {part!r}: expected mode:seconds") from None
        if duration <= 0:
            raise ValueError(f"schedule step {part!r}: seconds must be positive")
        steps.append((name, duration))
    if not steps:
        raise ValueError("empty schedule")
    return steps
