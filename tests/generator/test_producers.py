"""Producer patterns and partitioners against the real broker; the control endpoint."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.generator.control import create_control_app
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from clickflow.kafka.config import consumer_config
from tests.processes import stop_tree


def read_back(settings: Settings, topic: str, n: int) -> list:
    c = Consumer(consumer_config(settings, f"rb-{topic}-{time.time()}"))
    c.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + 120  # generous: a busy machine
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in c.consume(1000, 0.5) if m.error() is None]
    c.close()
    return out


def engine_for(settings: Settings, topic: str, truth: Path | None = None, **opts) -> Engine:
    return Engine(
        settings,
        PageViewFactory(topic=topic, pages=50),
        "producer-test",
        RateModel(mode="fixed", rate=100_000),
        Mix(0.05, 0.01),
        GeneratorOptions(**opts),
        truth_path=truth,
    )


@pytest.mark.parametrize("pattern", ["sync", "async", "batch"])
def test_each_pattern_delivers_every_event(
    settings: Settings, topic: str, tmp_path: Path, pattern: str
) -> None:
    truth = tmp_path / "truth.jsonl"
    count = 300 if pattern == "sync" else 3000
    engine = engine_for(settings, topic, truth, pattern=pattern, batch_size=500, batch_ms=20)
    stats = engine.run(count=count)
    engine.close()
    assert stats.sent == stats.acked == count and stats.failed == 0
    lines = read_truth(truth)
    assert len(lines) == count
    got = read_back(settings, topic, count)
    assert len(got) == count
    assert {(m.partition(), m.offset()) for m in got} == {
        (x["partition"], x["offset"]) for x in lines
    }
    assert sum(x["dup"] for x in lines) == stats.duplicates > 0


def test_key_partitioning_keeps_a_page_on_one_partition(settings: Settings, topic: str) -> None:
    engine = engine_for(settings, topic, partitioner="key")
    engine.run(count=4000)
    engine.close()
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for m in read_back(settings, topic, 4000):
        if m.key():  # events broken with an empty page_id have no key
            partitions[m.key()].add(m.partition())
    assert len(partitions) > 10
    assert all(len(p) == 1 for p in partitions.values())
    assert len(set().union(*partitions.values())) > 1


def test_round_robin_spreads_evenly_and_random_uses_all(settings: Settings, topic: str) -> None:
    engine = engine_for(settings, topic, partitioner="round-robin")
    engine.run(count=4000)
    engine.close()
    counts = Counter(m.partition() for m in read_back(settings, topic, 4000))
    assert sorted(counts) == [0, 1, 2, 3] and max(counts.values()) - min(counts.values()) <= 1
    other = topic + "-random"
    engine = engine_for(settings, other, partitioner="random")
    engine.run(count=4000)
    engine.close()
    counts = Counter(m.partition() for m in read_back(settings, other, 4000))
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(800 < n < 1200 for n in counts.values()), counts


def test_fixed_rate_is_met_within_5_percent(settings: Settings, topic: str) -> None:
    engine = engine_for(settings, topic)
    engine.rates.rate = 5000
    started = time.monotonic()
    stats = engine.run(duration=3.0)
    elapsed = time.monotonic() - started
    engine.close()
    achieved = (stats.valid + stats.broken + stats.duplicates) / elapsed
    assert abs(achieved - 5000) / 5000 < 0.05, achieved


def test_broker_outage_is_retried_and_the_generator_keeps_going(tmp_path: Path) -> None:
    """The broker dies mid-run and comes back on the same port: failures are counted,
    re-sent with backoff, and every event is eventually acknowledged."""
    import os
    import signal
    import threading

    from clickflow.runtime.broker import start_broker
    from clickflow.runtime.ports import free_port

    port = free_port()
    broker = start_broker("127.0.0.1", port, tmp_path)
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}")
    engine = Engine(
        settings,
        PageViewFactory(topic="outage"),
        "outage-test",
        RateModel(mode="fixed", rate=1000),
        Mix(0.0, 0.0),
        GeneratorOptions(
            retry_initial=0.1, retry_max=1.0, producer_overrides={"message.timeout.ms": 1000}
        ),
    )
    runner = threading.Thread(target=engine.run, kwargs={"count": 4000}, daemon=True)
    try:
        runner.start()
        _wait_for(lambda: engine.stats.acked > 0, "the first acknowledgements")
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait()
        _wait_for(lambda: engine.stats.failed > 0, "a failure to be counted")
        assert engine.stats.failed > 0  # reported, not silent
        broker = start_broker("127.0.0.1", port, tmp_path)
        runner.join(120)
        assert not runner.is_alive()
        s = engine.stats
        assert s.retried > 0
        assert s.valid == 4000 and s.acked == 4000, s.as_dict()
    finally:
        engine.close()
        stop_tree(broker, signal.SIGKILL)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def test_control_endpoint_changes_and_validates(settings: Settings, topic: str) -> None:
    engine = engine_for(settings, topic)
    client = TestClient(create_control_app({"pageviews": engine}))
    assert client.get("/control").json()["pageviews"]["mode"] == "fixed"
    r = client.post("/control", json={"mode": "burst"})
    assert r.status_code == 200 and r.json()["pageviews"]["mode"] == "burst"
    r = client.post("/control", json={"rate": 500})
    assert r.json()["pageviews"]["rate"] == 500 and r.json()["pageviews"]["mode"] == "fixed"
    r = client.post("/control", json={"mix": {"broken_share": 0.2}})
    assert r.json()["pageviews"]["mix"] == {"broken_share": 0.2, "duplicate_share": 0.01}
    for bad in (
        {"mode": "turbo"},
        {"rate": -5},
        {"rate": "fast"},
        {"mix": {"broken_share": 2}},
        {"mix": {"broken_share": 0.6, "duplicate_share": 0.5}},
        {"schedule": "x:1"},
        {"unknown": 1},
        {"domain": "nope", "rate": 5},
    ):
        r = client.post("/control", json=bad)
        assert 400 <= r.status_code < 500, (bad, r.status_code)
    # Nothing changed by the rejected requests.
    state = client.get("/control").json()["pageviews"]
    assert state["rate"] == 500 and state["mix"]["broken_share"] == 0.2
    engine.close()
