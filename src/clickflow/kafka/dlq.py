"""Dead letters: invalid records with the reason, sent as-is to ``<topic>.dlq``.

The DLQ record keeps the original key and bytes; headers carry the reason and where the
record came from (topic, partition, offset) so it can be found and replayed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from confluent_kafka import Message

from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import dlq_topic


@dataclass(slots=True)
class DeadLetter:
    message: Message
    reason: str


def dlq_headers(letter: DeadLetter, pipeline: str) -> list[tuple[str, bytes]]:
    m = letter.message
    return [
        ("dlq.reason", letter.reason.encode()),
        ("dlq.pipeline", pipeline.encode()),
        ("dlq.topic", m.topic().encode()),
        ("dlq.partition", str(m.partition()).encode()),
        ("dlq.offset", str(m.offset()).encode()),
        ("dlq.time_ms", str(int(time.time() * 1000)).encode()),
    ]


def publish_dead_letters(
    producer: EventProducer, letters: list[DeadLetter], pipeline: str, timeout: float = 30.0
) -> None:
    """Send and wait for the acks: dead letters must be stored before offsets are committed."""
    if not letters:
        return
    errors: list[str] = []

    def on_delivery(err: object, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    for letter in letters:
        m = letter.message
        producer.send(
            dlq_topic(m.topic()),
            m.value() or b"",
            key=m.key(),
            headers=dlq_headers(letter, pipeline),
            on_delivery=on_delivery,
        )
    remaining = producer.flush(timeout)
    if remaining or errors:
        raise RuntimeError(f"DLQ publish failed: {remaining} unacked, errors={errors[:3]}")


#: How many recent dead letters each pipeline keeps in memory for the dashboard.
RECENT_KEPT = 20
_recent: dict[str, deque[dict]] = {}
_recent_lock = threading.Lock()


def remember_dead_letters(pipeline: str, letters: list[DeadLetter]) -> None:
    """Keep where the latest dead letters of ``pipeline`` came from and why (this process)."""
    now = time.time()
    with _recent_lock:
        recent = _recent.setdefault(pipeline, deque(maxlen=RECENT_KEPT))
        for d in letters[-RECENT_KEPT:]:
            m = d.message
            recent.append(
                {
                    "time": now,
                    "reason": d.reason[:300],
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                }
            )


def recent_dead_letters() -> dict[str, list[dict]]:
    """The remembered dead letters of every pipeline in this process, newest first."""
    with _recent_lock:
        return {name: list(letters)[::-1] for name, letters in _recent.items()}
