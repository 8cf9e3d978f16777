"""`--consumers N`: N consumers of a pipeline in one group, each with its own handler."""

from __future__ import annotations

from clickflow.config import Settings
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.topics import TopicSpec
from clickflow.pipelines import PipelineSpec, build_consumers

from .test_batch_consumer import MemorySink


def test_build_consumers_makes_n_members_of_one_group(settings: Settings, topic: str) -> None:
    spec = PipelineSpec(
        name="n-test",
        topics=[TopicSpec(topic, 4)],
        store="clickhouse",
        build_handler=lambda _s, _o: MemorySink(),
        build_intent_log=ClickHouseIntentLog,
        health_check=lambda _s: True,
    )
    consumers = build_consumers(settings, spec, None, 3)
    assert len(consumers) == 3
    assert {c.group for c in consumers} == {"clickflow-n-test"}
    assert len({id(c.handler) for c in consumers}) == 3
    assert all(c.health_check is not None and c.health_check() for c in consumers)


def test_consumers_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CLICKFLOW_CONSUMERS", "3")
    assert Settings().consumers == 3
    monkeypatch.delenv("CLICKFLOW_CONSUMERS")
    assert Settings().consumers == 1
