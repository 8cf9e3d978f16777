"""Property test at the pipeline level (tansu + chDB + Redis, the real page-view pipeline):
schema-shaped page views whose text fields are hostile (tests/hostile_text.py) and whose
timestamps cover the whole accepted range and beyond it. Every record ends stored exactly once
or as a dead letter with a reason, every re-send is dropped, and a canary sent after them is
stored within seconds (nothing stalled the pipeline)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from clickflow.config import Settings
from clickflow.domains.pageviews.events import event_identity
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.stores.clickhouse import clickhouse_client
from tests.hostile_text import hostile_text

from .test_guarantees import pipeline, pv_settings  # noqa: F401 - the fixture

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
PARTITIONS = 4  # of the test topic (see test_guarantees.pipeline)


def views() -> st.SearchStrategy[dict]:
    # From before 2000 (rejected) to two hours ahead of the send (more than 1 h: rejected).
    span = (datetime.now(UTC) + timedelta(hours=2) - EPOCH_2000).total_seconds()
    when = st.floats(min_value=-86400.0, max_value=span).map(
        lambda s: (EPOCH_2000 + timedelta(seconds=s)).isoformat()
    )
    return st.fixed_dictionaries(
        {
            "page_id": hostile_text(512, min_size=1),
            "user_id": hostile_text(256, min_size=1),
            "view_duration_ms": st.integers(0, 24 * 3600 * 1000),
            "timestamp": when,
            "is_bounce": st.booleans(),
            "user_agent": hostile_text(300),
            "ip_address": st.sampled_from(["", "10.0.0.1", "::1", "2001:db8::7", "x pv:sweep"]),
            "region": hostile_text(64),
        }
    )


class Running:
    """The pipeline consuming in the background for the whole test."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = pipeline(settings, topic)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(30)


def profile(examples: int):
    return hsettings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )


def check_property(s: Settings, topic: str, running: Running, batch: list[dict], salt: str) -> None:
    ch = clickhouse_client(s)
    producer = EventProducer(producer_config(s, **{"linger.ms": 1}))
    # ``run`` (an unknown field, ignored) makes this run's events its own: the Redis claims
    # outlive the test, and another run drawing the same views must not meet them.
    values = [orjson.dumps({**v, "run": salt}) for v in batch]
    landed: dict[int, tuple[int, int]] = {}
    for i, value in enumerate(values + values):  # every record sent twice: the copy is a re-send

        def done(err, msg, i: int = i) -> None:
            assert err is None, err
            landed[i] = (msg.partition(), msg.offset())

        producer.send(topic, value, key=str(i % len(values)).encode(), on_delivery=done)
    canaries = [
        orjson.dumps(
            {
                "page_id": f"canary-{uuid.uuid4().hex}",
                "user_id": "canary",
                "view_duration_ms": 1,
                "timestamp": datetime.now(UTC).isoformat(),
                "is_bounce": False,
            }
        )
        for _ in range(PARTITIONS)
    ]
    for partition, canary in enumerate(canaries):  # one behind the records of each partition
        producer.send(topic, canary, partition=partition)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 20
    while ch.command(
        "SELECT count() FROM page_views_raw WHERE event_id IN {e:Array(String)}",
        parameters={"e": [event_identity(c) for c in canaries]},
    ) < len(canaries):
        assert running.thread.is_alive(), "the pipeline stopped"
        assert time.monotonic() < deadline, "the canaries were not stored within 20 s"
        time.sleep(0.1)
    for i, value in enumerate(values):
        stored = ch.command(
            "SELECT count() FROM page_views_raw WHERE event_id = {e:String}",
            parameters={"e": event_identity(value)},
        )
        reasons = ch.query(
            "SELECT error_reason FROM processing_errors "
            "WHERE (kafka_partition, kafka_offset) IN {coords:Array(Tuple(Int32, Int64))}",
            parameters={"coords": [landed[i], landed[i + len(values)]]},
        ).result_rows
        if stored:
            assert stored == 1 and not reasons, (value, stored, reasons)
        else:
            # both copies are dead letters, each with a reason
            assert len(reasons) == 2 and all(r[0] for r in reasons), (value, reasons)


@pytest.mark.parametrize(
    "examples",
    [pytest.param(12, id="short"), pytest.param(150, marks=pytest.mark.chaos, id="long")],
)
def test_hostile_page_views_are_stored_once_or_dead_lettered(
    pv_settings: Settings,  # noqa: F811
    topic: str,
    examples: int,
) -> None:
    ch = clickhouse_client(pv_settings)
    for table in ("page_views_raw", "page_views_agg_minute", "page_views_agg_hour"):
        ch.command(f"ALTER TABLE {table} REMOVE TTL")  # every accepted timestamp stays
    running = Running(pv_settings, topic)
    salt = uuid.uuid4().hex
    try:

        @profile(examples)
        @given(batch=st.lists(views(), min_size=1, max_size=6))
        def run(batch: list[dict]) -> None:
            check_property(pv_settings, topic, running, batch, salt)

        run()
    finally:
        running.stop()
