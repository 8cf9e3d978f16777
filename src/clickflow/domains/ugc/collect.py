"""What the collector takes for UGC (the ``collect.py`` convention of ``clickflow.domains``):
the seed's event kinds, the topic the UGC pipeline reads, and the record published there."""

from __future__ import annotations

from msgspec import Struct

from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.events import EVENT_KINDS, UgcRecord
from clickflow.kafka.topics import TopicSpec

#: kind -> the Struct its ``data`` must match (the same dict as ``events.EVENT_KINDS``)
KINDS: dict[str, type[Struct]] = EVENT_KINDS


def topic() -> TopicSpec:
    """One place configures both: ``CLICKFLOW_UGC_TOPIC`` / ``CLICKFLOW_UGC_PARTITIONS``."""
    config = UgcConfig()
    return TopicSpec(config.topic, config.partitions)


def record(kind: str, event_id: str, user_id: str, timestamp_ms: int, data: Struct) -> UgcRecord:
    return UgcRecord(kind, event_id, user_id, timestamp_ms, data)  # type: ignore[arg-type]
