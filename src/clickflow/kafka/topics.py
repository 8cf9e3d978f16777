"""Topic creation with partitions and configs.

tansu answers DescribeConfigs with ``{}`` unless the topic was created with configs, and
some clients (Quix Streams) need retention.ms from it: always pass configs at creation.
"""

from __future__ import annotations

import threading
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


def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    timeout: float = 15.0,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Replication defaults to the process settings (``CLICKFLOW_KAFKA_REPLICATION_FACTOR``,
    ``CLICKFLOW_KAFKA_MIN_INSYNC_REPLICAS``): 1 for the embedded broker, 3 and 2 on a cluster,
    so that an acknowledged record (``acks=all``) survives the loss of a broker."""
    if replication_factor is None or min_insync_replicas is None:
        # Read now, not the process-wide cached settings: the first caller would pin them.
        from clickflow.config import Settings

        settings = Settings()
        replication_factor = replication_factor or settings.kafka_replication_factor
        min_insync_replicas = min_insync_replicas or settings.kafka_min_insync_replicas
    extra = {"min.insync.replicas": str(min_insync_replicas)} if replication_factor > 1 else {}
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise KafkaUnavailable(f"Kafka at {bootstrap} is unreachable: {e}") from e
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=replication_factor,
            config={**s.config, **extra},
        )
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


#: An admin client per bootstrap that answered: a health probe (`serve`'s /healthz every
#: 10 s) asks it for metadata instead of building a client (threads, connection, ApiVersions)
#: each time. A client that failed is dropped, so a bad address leaves nothing retrying.
_reachable_clients: dict[str, AdminClient] = {}
_reachable_lock = threading.Lock()


def kafka_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    with _reachable_lock:
        admin = _reachable_clients.pop(bootstrap, None)
    if admin is None:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    with _reachable_lock:
        _reachable_clients.setdefault(bootstrap, admin)
    return True
