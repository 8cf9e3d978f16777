"""Running pipelines: a pipeline = topics + a batch handler on the one consumer framework."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.kafka.batch import BatchHandler, BatchTrigger, Delivery, IntentLog
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics

log = logging.getLogger("clickflow.pipelines")


@dataclass
class PipelineOptions:
    trigger: BatchTrigger = field(default_factory=BatchTrigger)
    delivery: Delivery = Delivery.EXACTLY_ONCE
    group: str | None = None  # default: "clickflow-<pipeline name>"


@dataclass
class PipelineSpec:
    name: str
    topics: list[TopicSpec]
    store: Literal["clickhouse", "postgres"]
    build_handler: Callable[[Settings, PipelineOptions], BatchHandler]
    build_intent_log: Callable[[Settings], IntentLog] | None = None
    default_options: PipelineOptions = field(default_factory=PipelineOptions)


def all_pipelines() -> dict[str, PipelineSpec]:
    out: dict[str, PipelineSpec] = {}
    for domain in DOMAINS:
        mod = domain_module(domain, "pipeline")
        if mod is not None:
            for spec in getattr(mod, "PIPELINES", []):
                out[spec.name] = spec
    return out


def build_consumer(
    settings: Settings, spec: PipelineSpec, options: PipelineOptions | None = None
) -> BatchConsumer:
    opts = options or spec.default_options
    group = opts.group or f"clickflow-{spec.name}"
    ensure_topics(
        settings.kafka_bootstrap,
        spec.topics + [TopicSpec(dlq_topic(t.name), t.partitions) for t in spec.topics],
    )
    intent_log = None
    if opts.delivery is Delivery.EXACTLY_ONCE:
        if spec.build_intent_log is None:
            raise ValueError(f"pipeline {spec.name} does not support exactly-once")
        intent_log = spec.build_intent_log(settings)
    return BatchConsumer(
        name=spec.name,
        topics=[t.name for t in spec.topics],
        handler=spec.build_handler(settings, opts),
        consumer_conf=consumer_config(settings, group),
        dlq_producer=EventProducer(producer_config(settings, **{"linger.ms": 1})),
        trigger=opts.trigger,
        delivery=opts.delivery,
        intent_log=intent_log,
    )


def start_in_threads(consumers: list[BatchConsumer]) -> list[threading.Thread]:
    threads = []
    for c in consumers:
        t = threading.Thread(target=c.run, name=f"pipeline-{c.name}", daemon=True)
        t.start()
        threads.append(t)
    return threads
