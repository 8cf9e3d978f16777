"""Broker loss: the collector answers 503 while Kafka is down and recovers by itself when a
broker is back on the same address (no collector restart).

The embedded broker (tansu) keeps everything in memory, so the restarted broker starts
empty: what was acknowledged before the loss is gone, and only what the collector accepted
afterwards is there. docs/reliability.md says what this means and what a replicated Kafka
gives instead."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from starlette.testclient import TestClient

from clickflow.collector.app import create_app
from clickflow.collector.config import CollectorConfig
from clickflow.config import Settings
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port

from .harness import read_topic, stop_group

CLICK = {"event": "element_click", "data": {"element_type": "movie", "page_type": "movie"}}


def test_collector_answers_503_while_the_broker_is_down_and_recovers(
    base_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    broker = start_broker("127.0.0.1", port, tmp_path / "logs")
    settings = base_settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{port}", "redis_url": None}
    )
    topic = f"broker-loss-{uuid.uuid4().hex[:8]}"
    opts = CollectorConfig(topic=topic, rate_per_second=0, publish_timeout_ms=1000)
    try:
        with TestClient(create_app(settings, opts)) as client:
            before = client.post("/v1/events", json=CLICK)
            assert before.status_code == 202, before.text

            stop_group(broker, signal.SIGKILL)
            for _ in range(3):
                t0 = time.monotonic()
                r = client.post("/v1/events", json=[CLICK, CLICK])
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert [x["status"] for x in r.json()["results"]] == ["failed", "failed"]
                assert time.monotonic() - t0 < 3.0  # a quick answer, not a hanging request
            assert client.get("/healthz").status_code == 503

            broker = start_broker("127.0.0.1", port, tmp_path / "logs")
            accepted = []
            deadline = time.monotonic() + 120  # generous: a busy machine
            while len(accepted) < 3:
                assert time.monotonic() < deadline, "the collector did not recover"
                r = client.post("/v1/events", json=CLICK)
                assert r.status_code in (202, 503), r.text
                if r.status_code == 202:
                    accepted.append(r.json()["event_id"])
                else:
                    time.sleep(0.5)
            assert client.get("/healthz").status_code == 200
        stored = [m.value() for m in read_topic(settings, topic, 4)]
        # The new (in-memory) broker holds exactly what was accepted after it came back.
        assert len(stored) == len(accepted)
        assert all(sum(e.encode() in v for v in stored) == 1 for e in accepted)
        assert all(before.json()["event_id"].encode() not in v for v in stored)
    finally:
        stop_group(broker, signal.SIGKILL)
