"""The event kinds the collector accepts, learned from the domains.

A domain whose events arrive through the collector has a ``collect.py`` (see
``clickflow.domains``): ``KINDS`` (kind -> the Struct of its ``data``), ``topic()`` (where
its events go) and ``record(...)`` (what is published). The collector names no domain; it
serves the one that declares ``collect.py``. One collector publishes to one topic, so a
second such domain is refused at start-up rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from msgspec import Struct

from clickflow.collector.exceptions import CollectedDomainError
from clickflow.domains import DOMAINS, domain_module
from clickflow.kafka.topics import TopicSpec

#: record(kind, event_id, user_id, timestamp_ms, data) -> the Struct published to Kafka
RecordBuilder = Callable[[str, str, str, int, Struct], Struct]


@dataclass(frozen=True)
class Collected:
    domain: str
    kinds: dict[str, type[Struct]]  # the domain's own dict: a kind added there shows up here
    topic: Callable[[], TopicSpec]
    record: RecordBuilder


def find_collected(domains: list[str]) -> Collected:
    """The one domain among ``domains`` that has a ``collect.py``."""
    found = []
    for domain in domains:
        module = domain_module(domain, "collect")
        if module is not None:
            found.append(Collected(domain, module.KINDS, module.topic, module.record))
    if len(found) != 1:
        names = ", ".join(c.domain for c in found) or "none"
        raise CollectedDomainError(
            f"the collector needs exactly one domain with a collect.py, found: {names}"
        )
    return found[0]


@lru_cache(maxsize=1)
def collected() -> Collected:
    return find_collected(DOMAINS)
