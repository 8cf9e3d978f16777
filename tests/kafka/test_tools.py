"""Operator tools on the embedded broker: kcat (through `clickflow kcat`), `clickflow topics`
and `clickflow tail`."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from clickflow.config import Settings
from clickflow.kafka.config import consumer_config
from clickflow.kafka.topics import TopicSpec, ensure_topics


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKFLOW_")}
    env["CLICKFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["COLUMNS"] = "250"
    return env


def _run(settings: Settings, *args: str, stdin: bytes | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "clickflow", *args],
        env=_env(settings),
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return out.stdout.decode()


@pytest.mark.skipif(shutil.which("kcat") is None, reason="Debian's kcat: apt-get install kcat")
def test_kcat_produces_lists_and_consumes(base_settings: Settings, topic: str) -> None:
    ensure_topics(base_settings.kafka_bootstrap, [TopicSpec(topic, 2)])
    _run(base_settings, "kcat", "-P", "-t", topic, "-k", "k1", "-H", "h=v", stdin=b'{"a": 1}\n')
    assert f'topic "{topic}" with 2 partitions' in _run(base_settings, "kcat", "-L")
    got = _run(
        base_settings, "kcat", "-C", "-t", topic, "-e", "-o", "beginning", "-f", "%k|%h|%s\n"
    )
    assert got.splitlines() == ['k1|h=v|{"a": 1}']


def test_topics_lists_partitions_end_offsets_and_lag(base_settings: Settings, topic: str) -> None:
    ensure_topics(base_settings.kafka_bootstrap, [TopicSpec(topic, 2)])
    producer = Producer({"bootstrap.servers": base_settings.kafka_bootstrap, "linger.ms": 20})
    for i in range(10):  # batched: the case where the broker's ListOffsets answer is off
        producer.produce(topic, b"%d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    group = f"g-{topic}"
    consumer = Consumer(consumer_config(base_settings, group))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 5)], asynchronous=False
        )
    finally:
        consumer.close()
    row = next(line for line in _run(base_settings, "topics", topic).splitlines() if topic in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == [topic, "2", "10", "0:5 1:5"], row
    assert f"{group}: 3" in cells[4], row  # (5 - 2) + (5 - 5)


def test_tail_prints_the_last_records_then_follows(base_settings: Settings, topic: str) -> None:
    ensure_topics(base_settings.kafka_bootstrap, [TopicSpec(topic, 1)])
    producer = Producer({"bootstrap.servers": base_settings.kafka_bootstrap})
    for i in range(4):
        producer.produce(topic, orjson.dumps({"n": i}), key=b"k%d" % i)
    producer.produce(topic, b"\x00not json\xff", headers=[("why", b"bytes")])
    assert producer.flush(30) == 0
    lines = [orjson.loads(x) for x in _run(base_settings, "tail", topic, "-n", "2").splitlines()]
    assert [(x["offset"], x["key"], x["value"]) for x in lines] == [
        (3, "k3", {"n": 3}),
        (4, None, "\x00not json\ufffd"),
    ]
    assert lines[1]["headers"] == {"why": "bytes"}

    proc = subprocess.Popen(
        [sys.executable, "-m", "clickflow", "tail", topic, "-n", "0", "--follow"],
        env=_env(base_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 90
        line = b""
        while not line:  # produce until the follower, once assigned, prints one
            assert time.monotonic() < deadline, "tail --follow printed nothing"
            assert proc.poll() is None
            producer.produce(topic, b'{"n": 99}')
            producer.flush(10)
            if selector.select(timeout=1.0):
                line = proc.stdout.readline()
        assert orjson.loads(line)["value"] == {"n": 99}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
