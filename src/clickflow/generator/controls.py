"""The live controls of a traffic source: mode, rate, schedule, mix, stop and state.

One class for both sources the control API drives: an ``Engine`` applies a change to its own
rate model, a ``WorkerPool`` also forwards it to its worker processes (``_forward``), whose
engines apply it with ``apply``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from clickflow.generator.metrics import Stats
from clickflow.generator.modes import RateModel, validate_mode
from clickflow.generator.options import GeneratorOptions, Mix

#: A change as it travels to a worker: ("mode", "burst"), ("rate", 500.0),
#: ("schedule", [("night", 30.0)]), ("mix", Mix(...)) or ("stop", None)
Command = tuple[str, Any]


class GeneratorControls:
    """Thread-safe controls over ``rates``, ``schedule`` and ``mix``; ``stop`` from any thread
    (also from a signal handler)."""

    def __init__(
        self,
        domain: str,
        rate_model: RateModel | None,
        mix: Mix | None,
        options: GeneratorOptions | None,
        schedule: list[tuple[str, float]] | None,
    ) -> None:
        self.domain = domain
        self.rates = rate_model or RateModel()
        self.mix = mix or Mix()
        self.options = options or GeneratorOptions()
        self.schedule = schedule
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: When the current mode (or fixed rate) began: modes and schedules run from here.
        self._mode_started = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def set_mode(self, mode: str) -> None:
        validate_mode(mode)
        with self._lock:
            self.rates.mode = mode
            self.schedule = None
            self._mode_started = time.monotonic()
        self._forward(("mode", mode))

    def set_rate(self, rate: float) -> None:
        """Switch to the fixed mode at ``rate`` events/s (a pool's total: each worker's
        RateModel.share makes it 1/N)."""
        if not 0 < rate <= 10_000_000:
            raise ValueError("rate must be between 0 and 10,000,000 events/s")
        with self._lock:
            self.rates.rate = float(rate)
            self.rates.mode = "fixed"
            self.schedule = None
            self._mode_started = time.monotonic()
        self._forward(("rate", float(rate)))

    def set_schedule(self, schedule: list[tuple[str, float]]) -> None:
        with self._lock:
            self.schedule = schedule
        self._forward(("schedule", schedule))

    def set_mix(self, mix: Mix) -> None:
        with self._lock:
            self.mix = mix
        self._forward(("mix", mix))

    def apply(self, command: Command) -> None:
        """Carry out a forwarded change (in a worker process)."""
        name, value = command
        if name == "stop":
            self.stop()
        elif name == "mode":
            self.set_mode(value)
        elif name == "rate":
            self.set_rate(value)
        elif name == "schedule":
            self.set_schedule(value)
        elif name == "mix":
            self.set_mix(value)
        else:
            raise ValueError(f"unknown generator command {name!r}")

    @property
    def mode(self) -> str:
        return self.rates.mode

    def state(self) -> dict:
        with self._lock:
            return {
                "domain": self.domain,
                "mode": self.mode,
                "rate": self.rates.rate,
                "schedule": self.schedule,
                "mix": {
                    "broken_share": self.mix.broken_share,
                    "duplicate_share": self.mix.duplicate_share,
                },
                "pattern": self.options.pattern,
                "partitioner": self.options.partitioner,
                **self._state_extra(),
                "stats": self.stats.as_dict(),
            }

    def _forward(self, command: Command) -> None:
        """Pass a change on; the engine has nowhere to pass it, a pool sends it to its
        workers. Called after the lock is released."""

    def _state_extra(self) -> dict:
        """Fields a subclass adds to ``state()`` (called under the lock)."""
        return {}
