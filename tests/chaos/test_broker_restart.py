"""An embedded broker restart (tansu keeps nothing): offsets start again at 0 while the
stores keep what they had. The exactly-once machinery keys its intent log and insert
deduplication tokens by (group, topic, partition, offset range), so new records at old
offsets must not be taken for replays of old ones."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

from clickflow.config import Settings
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from clickflow.migrations import migrate_clickhouse
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port
from clickflow.stores.clickhouse import clickhouse_client
from tests.domains.pageviews.support import consumer_for

from .harness import stop_group


def _send(settings: Settings, topic: str, truth: Path, seed: int, count: int = 400) -> int:
    engine = Engine(
        settings,
        PageViewFactory(topic=topic, users=50, pages=10, seed=seed),
        "broker-restart",
        RateModel(mode="fixed", rate=5000),
        Mix(broken_share=0.0, duplicate_share=0.0),
        GeneratorOptions(seed=seed, partitioner="round-robin"),
        truth_path=truth,
    )
    engine.run(count=count)
    engine.close()
    return len({line["id"] for line in read_truth(truth)})


def _consume_until(settings: Settings, topic: str, want: int, timeout: float) -> int:
    consumer = consumer_for(settings, topic, trigger=_trigger())
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    ch = clickhouse_client(settings)
    deadline = time.monotonic() + timeout
    n = 0
    try:
        while time.monotonic() < deadline:
            n = ch.command("SELECT count() FROM page_views_raw")
            if n >= want and consumer.stats.commits:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        return ch.command("SELECT count() FROM page_views_raw")
    finally:
        consumer.stop()
        t.join(20)


def _trigger():
    from clickflow.kafka.batch import BatchTrigger

    return BatchTrigger(max_records=100, max_seconds=0.2)


def test_new_records_at_reused_offsets_after_a_broker_restart_are_stored(
    settings_full: Settings, tmp_path: Path
) -> None:
    port = free_port()
    broker = start_broker("127.0.0.1", port, tmp_path / "logs")
    s = settings_full.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
    migrate_clickhouse(s)
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        first = _send(s, topic, tmp_path / "first.jsonl", seed=1)
        assert _consume_until(s, topic, first, 30) == first

        stop_group(broker, signal.SIGKILL)  # everything in the broker is gone
        broker = start_broker("127.0.0.1", port, tmp_path / "logs")
        # The old intent log still shapes the chunks until the new offsets pass the old
        # ranges: a record of an incomplete old range waits for the next ones (delayed, not
        # lost), so send more than before to every partition.
        second = _send(s, topic, tmp_path / "second.jsonl", seed=2)
        second += _send(s, topic, tmp_path / "third.jsonl", seed=3)
        stored = _consume_until(s, topic, first + second, 30)
    finally:
        stop_group(broker, signal.SIGKILL)
    assert stored == first + second, f"{first + second - stored} new records were dropped"
