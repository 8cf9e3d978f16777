"""What a domain supplies to the traffic engine: an event factory.

The engine owns rates, load modes, the duplicate share, producer patterns, partitioners,
metrics and the ground-truth file. A factory only knows its own events: how to make a
realistic valid one, and how to break one on purpose.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from clickflow.kafka.topics import TopicSpec


@dataclass(slots=True)
class GeneratedEvent:
    """One record to send.

    ``identity`` is the event's identity (event_id, click_id, ...) used by the ground truth;
    ``broken`` is None for a valid event, else the kind of breakage ("empty_page_id",
    "negative_duration", "malformed_json", ...). ``truth`` carries extra fields a test may
    need to recompute aggregates independently (page, user, minute...).
    """

    key: bytes | None
    value: bytes
    identity: str
    broken: str | None = None
    truth: dict | None = None


class EventFactory(Protocol):
    #: the topic this domain's events go to
    topic: TopicSpec
    #: the kinds of breakage the factory knows, picked uniformly when a broken event is due
    breakages: tuple[str, ...]

    def valid(self, rng: random.Random, now: float) -> GeneratedEvent:
        """A realistic valid event at wall-clock time ``now`` (epoch seconds)."""
        ...

    def broken(self, rng: random.Random, now: float, breakage: str) -> GeneratedEvent:
        """An event broken in the given way (must be rejected by the pipeline)."""
        ...
