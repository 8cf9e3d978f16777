"""librdkafka configuration built from Settings, one place for every client."""

from __future__ import annotations

import logging
from typing import Any

from clickflow.config import Settings

#: librdkafka's own log lines (connection failures...) go through Python logging, as JSON.
RDKAFKA_LOG = logging.getLogger("librdkafka")


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "none",
        "acks": "all",
        "enable.idempotence": False,
        "message.timeout.ms": 30000,
        "socket.keepalive.enable": True,
        "log_level": 3,
        "logger": RDKAFKA_LOG,
    }
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Low session timeout: a group join takes about session.timeout.ms / 2 on tansu.
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.kafka_session_timeout_ms // 6),
        "max.poll.interval.ms": 300000,
        # How long the broker may hold a fetch that finds no new records. tansu holds it by
        # re-reading every partition of the fetch after half the time left, then half of what
        # is left again, down to a millisecond (~log2(wait) reads per fetch), and answers at
        # the first read that finds records: a record waits at most half this. 50 ms made an
        # idle stack's consumers cost the embedded broker 11% of a core; 500 ms ~1.4% (28
        # partitions). 1 s would halve that, but a consumer whose first fetch goes out before
        # all its partitions are ready then holds the others back for the whole second: the
        # long-running pipeline consumers take 1 s (pipelines.PIPELINE_FETCH_WAIT_MS), short
        # readers (tools, tests) keep this.
        "fetch.wait.max.ms": 500,
        "queued.min.messages": 100000,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        # librdkafka postpones the next fetch by this much once its local queue is over
        # queued.min.messages; the default (1000 ms) stalls a consumer that just drained
        # the queue for up to a second. 10 ms doubled the framework's throughput.
        "fetch.queue.backoff.ms": 10,
        "log_level": 3,
        "logger": RDKAFKA_LOG,
    }
    conf.update(overrides)
    return conf
