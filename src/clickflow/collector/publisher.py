"""Publishing to Kafka from asyncio: answer only after the broker acknowledged.

confluent-kafka runs delivery callbacks inside ``poll()``. One daemon thread polls; the
callbacks of a request's records count down there, and when the last one is in, a single
``call_soon_threadsafe`` resolves that request's asyncio future. The event loop never blocks:
``produce()`` only enqueues, and a full local queue is an immediate failure (503), not a wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from clickflow.collector.exceptions import PublishFailed

NOT_ACKNOWLEDGED = "no acknowledgement from Kafka in time"


class _Pending:
    """The records of one request still waiting for their acknowledgement."""

    __slots__ = ("errors", "future", "lock", "loop", "remaining")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = n
        self.errors: list[str | None] = [NOT_ACKNOWLEDGED] * n
        self.loop = loop
        self.future: asyncio.Future[list[str | None]] = loop.create_future()
        self.lock = threading.Lock()

    def done(self, index: int, error: str | None) -> None:
        """Called from the poll thread (callbacks) or the loop thread (produce failed)."""
        with self.lock:
            self.errors[index] = error
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.errors)


def _resolve(future: asyncio.Future[list[str | None]], errors: list[str | None]) -> None:
    if not future.done():  # the request may have given up waiting already
        future.set_result(errors)


class KafkaPublisher:
    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        self._producer = Producer(config)
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_loop, name="collector-kafka-poll", daemon=True
        )
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def publish(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[str | None]:
        """Produce ``(key, value)`` records; per record ``None`` when the broker acknowledged
        it, else why it is not stored. Waits at most ``timeout`` seconds (then every record
        not acknowledged yet counts as failed — it may still land: clients retry with the
        same event_id, and consumers deduplicate on it)."""
        pending = _Pending(len(records), asyncio.get_running_loop())
        for i, (key, value) in enumerate(records):
            try:
                self._producer.produce(
                    topic, value, key, on_delivery=lambda err, msg, i=i: _delivered(pending, i, err)
                )
            except BufferError:
                pending.done(i, "the producer queue is full")
            except KafkaException as e:
                pending.done(i, f"produce failed: {e}")
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self._timeout)
        except TimeoutError:
            with pending.lock:
                return list(pending.errors)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._producer.flush(timeout)
        del self._producer  # frees librdkafka's handle now, not at some later GC


def _delivered(pending: _Pending, index: int, err: KafkaError | None) -> None:
    pending.done(index, None if err is None else f"kafka: {err.str()}")


def raise_for(errors: list[str | None]) -> None:
    """PublishFailed naming the first failure, when any record was not acknowledged."""
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise PublishFailed(first)
