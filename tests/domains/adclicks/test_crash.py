"""A consumer SIGKILLed mid-stream: after a restart every click is counted exactly once.

The pipeline runs as `python -m clickflow process adclicks` with its own chDB directory
(the pytest process owns another one), and the results are read back in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from clickflow.config import Settings
from clickflow.kafka.config import consumer_config
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from tests.processes import stop_tree

from .support import make_stream, produce

READER = """
import orjson
from clickflow.config import Settings
from clickflow.stores.clickhouse import clickhouse_client
ch = clickhouse_client(Settings())
per_ad = ch.query("SELECT ad_id, sum(clicks) FROM ad_clicks_minute GROUP BY ad_id").result_rows
raw = ch.query("SELECT count(), uniqExact(click_id) FROM ad_clicks_raw").result_rows[0]
print(orjson.dumps({"per_ad": {a: int(c) for a, c in per_ad}, "raw": list(raw)}).decode())
"""


def _committed(watcher: Consumer, topic: str) -> int:
    parts = [TopicPartition(topic, p) for p in range(4)]
    return sum(max(tp.offset, 0) for tp in watcher.committed(parts, timeout=10))


def _wait_committed(watcher, topic, proc, target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline process died"
        done = _committed(watcher, topic)
        if done >= target:
            return done
        time.sleep(0.05)
    raise AssertionError(f"only {done}/{target} records committed in {timeout}s")


# Several `clickflow process` starts, each a minute on a busy machine.
@pytest.mark.timeout(900)
def test_sigkill_mid_stream_loses_and_double_counts_nothing(
    base_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    topic = f"adclicks-kill-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "CLICKFLOW_CLICKHOUSE_DATABASE": "clickflow",
        "CLICKFLOW_KAFKA_BOOTSTRAP": base_settings.kafka_bootstrap,
        "CLICKFLOW_ADCLICKS_TOPIC": topic,
        "CLICKFLOW_REDIS_URL": redis_url,
        "CLICKFLOW_LOG_LEVEL": "INFO",
    }
    cmd = [sys.executable, "-m", "clickflow", "process", "adclicks"]
    cmd += ["--records", "400", "--seconds", "0.2"]
    ensure_topics(
        base_settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)]
    )
    stream = make_stream(36_000, seed=99, topic=topic, copy_share=0.05)
    total = sum(produce(base_settings, topic, stream.sends).values())
    assert total == len(stream.sends)

    watcher = Consumer(consumer_config(base_settings, "clickflow-adclicks"))
    log = open(tmp_path / "process.log", "wb")
    rng = random.Random(7)
    # Two SIGKILLs at random moments after a third and two thirds of the stream were
    # committed (mid-insert, between insert and commit, ...), then a run to the end.
    for share in (1 / 3, 2 / 3):
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            # Generous: a start takes a minute on a busy machine.
            _wait_committed(watcher, topic, proc, int(total * share), timeout=180)
            time.sleep(rng.uniform(0.0, 0.3))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert _committed(watcher, topic) < total, "the stream was over before the kill"

    last = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_committed(watcher, topic, last, total, timeout=180)
    finally:
        stop_tree(last, signal.SIGTERM, timeout=60)
        watcher.close()

    out = subprocess.run(
        [sys.executable, "-c", READER], env=env, capture_output=True, timeout=60, check=True
    )
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    truth = Counter(t["ad_id"] for t in stream.valid.values())
    assert result["raw"] == [len(stream.valid), len(stream.valid)]
    assert result["per_ad"] == dict(truth)

    # The backfill command agrees: nothing to correct.
    start, end = stream.span_ms
    backfill = subprocess.run(
        [sys.executable, "-m", "clickflow", "adclicks", "backfill", "--dry-run", "--json"]
        + ["--from", datetime.fromtimestamp(start / 1000, UTC).isoformat()]
        + ["--to", str(end // 1000)],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    report = json.loads(backfill.stdout.decode().strip().splitlines()[-1])
    assert report["differences"] == 0 and report["raw_clicks"] == len(stream.valid)
