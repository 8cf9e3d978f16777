"""A thin producer wrapper: back-pressure on a full queue, and a synchronous send."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from clickflow.kafka.exceptions import DeliveryFailed, KafkaUnavailable

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class EventProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)

    @property
    def raw(self) -> Producer:
        return self._producer

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue one record; when the local queue is full, serve callbacks and try again."""
        kwargs: dict[str, Any] = {"value": value, "key": key}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def send_sync(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """Send one record and wait for the broker's acknowledgement."""
        result: list[tuple[KafkaError | None, Message]] = []
        self.send(topic, value, key, headers, on_delivery=lambda e, m: result.append((e, m)))
        deadline = time.monotonic() + timeout
        while not result:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"no acknowledgement from Kafka within {timeout}s")
            self._producer.poll(0.01)
        err, msg = result[0]
        if err is not None:
            raise DeliveryFailed(str(err))
        return msg

    def poll(self, timeout: float = 0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every queued record to be acknowledged; returns how many are still queued."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), drop the rest, and end librdkafka's
        threads and connections. The producer cannot be used afterwards; closing twice is
        harmless. (librdkafka's own close waits for delivery without a limit: a broker that
        is down would hold it for ``message.timeout.ms``.)"""
        producer = self._producer
        try:
            if producer.flush(timeout):
                producer.purge()
                producer.flush(1.0)  # serves the purged records' delivery reports
            producer.close()
        except RuntimeError:  # closed already
            pass
