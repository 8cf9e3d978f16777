"""Collector and auth service on real sockets (uvicorn in a thread), against the session's
real Kafka broker and Redis; records are read back from Kafka by partition assignment."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import msgspec
import pytest
import uvicorn
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clickflow.collector.app import create_app
from clickflow.collector.auth import create_auth_app
from clickflow.collector.config import CollectorConfig
from clickflow.config import Settings
from clickflow.domains.ugc.events import UgcRecord
from clickflow.kafka.config import consumer_config
from clickflow.runtime.ports import free_port


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # generous: a busy machine
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


JWT_SECRET = "collector-tests-secret-of-32-bytes-or-more"


@pytest.fixture
def collector_settings(settings: Settings, redis_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": redis_url, "jwt_secret": JWT_SECRET})


@pytest.fixture
def auth_url(collector_settings: Settings) -> Iterator[str]:
    with serve(create_auth_app(collector_settings)) as url:
        yield url


StartCollector = Callable[..., httpx.Client]


@pytest.fixture
def start_collector(collector_settings: Settings, topic: str) -> Iterator[StartCollector]:
    """start_collector(settings overrides..., options=dict(...)) -> an httpx client on it.
    Rate limiting is off unless the test turns it on, so tests do not share buckets."""
    stack: list = []

    def start(options: dict | None = None, **settings_overrides: object) -> httpx.Client:
        s = collector_settings.model_copy(update=settings_overrides)
        opts = CollectorConfig(**{"topic": topic, "rate_per_second": 0, **(options or {})})
        cm = serve(create_app(s, opts))
        url = cm.__enter__()
        client = httpx.Client(base_url=url, timeout=15)
        stack.append((cm, client))
        return client

    yield start
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)


def read_raw(settings: Settings, topic: str, n: int, timeout: float = 10.0) -> list[bytes]:
    """The values of the first ``n`` records of ``topic`` (all partitions; fewer if fewer
    arrive in time). Each record's key must be its user_id: the collector keys by user."""
    consumer = Consumer(consumer_config(settings, f"read-{uuid.uuid4().hex[:8]}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    rec = msgspec.json.decode(m.value(), type=UgcRecord)
                    assert m.key() == rec.user_id.encode()
                    out.append(m.value())
        return out
    finally:
        consumer.close()


def read_records(settings: Settings, topic: str, n: int, timeout: float = 10.0) -> list[UgcRecord]:
    return [msgspec.json.decode(v, type=UgcRecord) for v in read_raw(settings, topic, n, timeout)]
