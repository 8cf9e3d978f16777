"""What a generator run is asked to do: the event mix and the producer options."""

from __future__ import annotations

from dataclasses import dataclass, field

PATTERNS = ("sync", "async", "batch")
PARTITIONERS = ("key", "round-robin", "random")


@dataclass
class Mix:
    """Shares of the event stream (the factory decides how to make/break each event)."""

    broken_share: float = 0.05
    duplicate_share: float = 0.01

    def __post_init__(self) -> None:
        for name in ("broken_share", "duplicate_share"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v!r}")
        if self.broken_share + self.duplicate_share > 1.0:
            raise ValueError("broken_share + duplicate_share must not exceed 1")


@dataclass
class GeneratorOptions:
    pattern: str = "async"
    partitioner: str = "key"
    batch_size: int = 1000  # batch pattern: N
    batch_ms: float = 50.0  # batch pattern: X
    retry_initial: float = 0.1
    retry_max: float = 5.0
    max_attempts: int = 0  # 0 = retry until it goes through
    seed: int = 42
    producer_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}: use {', '.join(PATTERNS)}")
        if self.partitioner not in PARTITIONERS:
            raise ValueError(
                f"unknown partitioner {self.partitioner!r}: use {', '.join(PARTITIONERS)}"
            )
        if not 1 <= self.batch_size <= 1_000_000:
            raise ValueError("batch_size must be between 1 and 1,000,000")
        if self.batch_ms <= 0:
            raise ValueError("batch_ms must be positive")
