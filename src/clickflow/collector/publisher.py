"""Publishing to Kafka from asyncio: answer only after the broker acknowledged.

confluent-kafka runs delivery callbacks inside ``poll()``. Here the event loop itself calls
``poll(0)`` (never blocks) on a 1 ms timer while records are in flight, so the callbacks run on
the loop thread and resolve each request's future directly: no extra thread, no locks, no
cross-thread wake-ups. ``produce()`` only enqueues; a full local queue is an immediate failure
(503), never a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from opentelemetry.trace import SpanKind

from clickflow.observability import tracing

NOT_ACKNOWLEDGED = "no acknowledgement from Kafka in time"


class _Pending:
    """The records of one request still waiting for their acknowledgement."""

    __slots__ = ("errors", "future", "publisher", "remaining")

    def __init__(
        self, n: int, future: asyncio.Future[list[str | None]], publisher: KafkaPublisher
    ) -> None:
        self.remaining = n
        self.errors: list[str | None] = [NOT_ACKNOWLEDGED] * n
        self.future = future
        self.publisher = publisher

    def delivered(self, index: int, err: KafkaError | None, _msg: object) -> None:
        """The delivery callback of record ``index`` (run inside ``poll()``)."""
        self.publisher.in_flight -= 1
        self.done(index, None if err is None else f"kafka: {err.str()}")

    def done(self, index: int, error: str | None) -> None:
        self.errors[index] = error
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():  # it may have timed out already
            self.future.set_result(self.errors)


class KafkaPublisher:
    def __init__(self, config: dict[str, Any], timeout: float, poll_interval: float = 0.001):
        self._producer = Producer(config)
        self._timeout = timeout
        self._poll_interval = poll_interval
        self.in_flight = 0
        self._timer: asyncio.TimerHandle | None = None

    async def publish(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> list[str | None]:
        """Produce ``(key, value)`` records; per record ``None`` when the broker acknowledged
        it, else why it is not stored. Waits at most ``timeout`` seconds (then every record
        not acknowledged yet counts as failed — it may still land: clients retry with the
        same event_id, and consumers deduplicate on it)."""
        if tracing.ENABLED and headers is None:
            return await self._traced_publish(topic, records)
        loop = asyncio.get_running_loop()
        pending = _Pending(len(records), loop.create_future(), self)
        produce, delivered = self._producer.produce, pending.delivered
        if headers is not None:
            produce = partial(produce, headers=headers)
        for i, (key, value) in enumerate(records):
            try:
                produce(topic, value, key, on_delivery=partial(delivered, i))
                self.in_flight += 1
            except BufferError:
                pending.done(i, "the producer queue is full")
            except KafkaException as e:
                pending.done(i, f"produce failed: {e}")
        if self._timer is None and self.in_flight:
            self._timer = loop.call_later(self._poll_interval, self._poll, loop)
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self._timeout)
        except TimeoutError:
            return list(pending.errors)

    async def _traced_publish(
        self, topic: str, records: Sequence[tuple[bytes, bytes]]
    ) -> list[str | None]:
        """One span per request; its context goes in every record's headers."""
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": len(records),
        }
        with tracing.span(f"publish {topic}", SpanKind.PRODUCER, attributes):
            return await self.publish(topic, records, tracing.record_headers())

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        self._producer.poll(0)  # runs the delivery callbacks that are due, here
        self._timer = (
            loop.call_later(self._poll_interval, self._poll, loop) if self.in_flight else None
        )

    def close(self, timeout: float = 5.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._producer.flush(timeout)
        del self._producer  # frees librdkafka's handle now, not at some later GC
