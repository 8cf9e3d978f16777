"""Topic creation with partitions and configs.

tansu answers DescribeConfigs with ``{}`` unless the topic was created with configs, and
some clients (Quix Streams) need retention.ms from it: always pass configs at creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from clickflow.kafka.exceptions import KafkaUnavailable

DEFAULT_TOPIC_CONFIG = {"retention.ms": "604800000", "cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 4
    config: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPIC_CONFIG))


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def ensure_topics(bootstrap: str, specs: list[TopicSpec], timeout: float = 15.0) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise KafkaUnavailable(f"Kafka at {bootstrap} is unreachable: {e}") from e
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
        for s in specs
        if s.name not in existing
    ]
    if not new:
        return
    for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailable(f"cannot create topic {name}: {e}") from e


def kafka_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False
