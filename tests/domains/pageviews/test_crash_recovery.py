"""SIGKILL the page-view consumer process mid-stream, several times: counts stay exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from clickflow.config import Settings
from clickflow.generator.truth import read_truth
from clickflow.kafka.config import consumer_config

from .support import ROLLUP_SQL, as_comparable, expected_rollups, generate, rows_to_comparable


def _env(settings: Settings, topic: str, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(data),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{data / 'clickhouse'}",
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_REDIS_URL": settings.redis_url or "",
        "CLICKFLOW_PAGEVIEWS_TOPIC": topic,
        "CLICKFLOW_LOG_LEVEL": "INFO",
    }


def _consumer(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clickflow",
            "process",
            "pageviews",
            "--mode",
            "hybrid",
            "--records",
            "700",
            "--seconds",
            "0.2",
            "--delivery",
            "exactly-once",
        ],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def _sql(env: dict[str, str], query: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "clickflow", "sql", query],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return [orjson.loads(line) for line in out.splitlines() if line]


# Four consumer starts, each ready only after it committed: minutes on a busy machine.
@pytest.mark.timeout(900)
def test_sigkill_mid_stream_keeps_exact_counts(
    settings_full: Settings, topic: str, tmp_path: Path
) -> None:
    env = _env(settings_full, topic, tmp_path / "data")
    truth = tmp_path / "truth.jsonl"
    producer = threading.Thread(
        target=generate, args=(settings_full, topic, 40_000, truth), daemon=True
    )
    producer.start()
    kills = 0
    log = tmp_path / "consumer.log"
    for delay in (0.5, 1.0, 1.5):
        before = _progress(settings_full, topic)
        proc = _consumer(env, log)
        try:
            # Ready when it commits (the group joined, it is inserting) or nothing is left.
            deadline = time.monotonic() + 180
            while _progress(settings_full, topic) <= before and not (
                not producer.is_alive() and before >= sum(_end_offsets(truth).values())
            ):
                assert time.monotonic() < deadline, "the consumer did not commit anything"
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(delay)  # somewhere inside a later batch
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    producer.join(120)
    assert not producer.is_alive()
    # Last run: wait until the group committed everything that was acked, then stop it.
    proc = _consumer(env, log)
    try:
        ends = _end_offsets(truth)
        deadline = time.monotonic() + 180
        while _committed(settings_full, topic, ends) != ends:
            assert time.monotonic() < deadline, "consumer did not catch up"
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert kills == 3
    minute, hour, valid, broken = expected_rollups(truth)
    counts = _sql(env, "SELECT count() AS n, uniqExact(event_id) AS u FROM page_views_raw")[0]
    assert counts == {"n": valid, "u": valid}
    got_minute = rows_to_comparable(
        tuple(r.values()) for r in _sql(env, ROLLUP_SQL.format(table="page_views_agg_minute"))
    )
    got_hour = rows_to_comparable(
        tuple(r.values()) for r in _sql(env, ROLLUP_SQL.format(table="page_views_agg_hour"))
    )
    assert got_minute == as_comparable(minute)
    assert got_hour == as_comparable(hour)
    errors = _sql(env, "SELECT count() AS n FROM processing_errors")[0]["n"]
    assert errors == broken


def _end_offsets(truth: Path) -> dict[int, int]:
    ends: dict[int, int] = {}
    for line in read_truth(truth):
        ends[line["partition"]] = max(ends.get(line["partition"], 0), line["offset"] + 1)
    return ends


def _progress(settings: Settings, topic: str) -> int:
    """Records the page-view group has committed on the topic's four partitions."""
    return sum(max(o, 0) for o in _committed(settings, topic, dict.fromkeys(range(4), 0)).values())


def _committed(settings: Settings, topic: str, ends: dict[int, int]) -> dict[int, int]:
    c = Consumer(consumer_config(settings, "clickflow-pageviews"))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}
