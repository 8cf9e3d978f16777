"""Page-view test support: generated traffic with its ground truth, a consumer, and the
expected rollups computed independently from that truth."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from clickflow.config import Settings
from clickflow.domains.pageviews.pipeline import PageViewHandler
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics


def expected_rollups(truth_path: Path) -> tuple[dict, dict, int, int]:
    """Returns (per (minute, page), per (hour, page), valid unique events, broken events)."""
    lines = read_truth(truth_path)
    minute: dict = defaultdict(lambda: {"views": 0, "ms": 0, "users": set(), "bounces": 0})
    hour: dict = defaultdict(lambda: {"views": 0, "ms": 0, "users": set(), "bounces": 0})
    seen: set[str] = set()
    broken = 0
    for line in lines:
        if line["broken"]:
            broken += 1
            continue
        if line["id"] in seen:
            continue
        seen.add(line["id"])
        t = line["truth"]
        for table, key in (
            (minute, (t["minute"], t["page"])),
            (hour, (t["minute"] // 3600 * 3600, t["page"])),
        ):
            agg = table[key]
            agg["views"] += 1
            agg["ms"] += t["ms"]
            agg["users"].add(t["user"])
            agg["bounces"] += int(t["bounce"])
    return minute, hour, len(seen), broken


def as_comparable(table: dict) -> dict:
    return {key: (v["views"], v["ms"], len(v["users"]), v["bounces"]) for key, v in table.items()}


ROLLUP_SQL = (
    "SELECT toUnixTimestamp(window_start) AS w, page_id, sumMerge(view_count) AS v, "
    "sumMerge(total_duration) AS ms, uniqExactMerge(unique_users) AS u, "
    "sumMerge(bounce_count) AS b FROM {table} GROUP BY w, page_id"
)


def rows_to_comparable(rows) -> dict:
    return {(int(w), p): (int(v), int(ms), int(u), int(b)) for w, p, v, ms, u, b in rows}


def generate(settings: Settings, topic: str, count: int, truth: Path, **opts) -> Engine:
    engine = Engine(
        settings,
        PageViewFactory(topic=topic, users=300, pages=40),
        "pageviews-test",
        RateModel(mode="fixed", rate=50_000),
        Mix(broken_share=0.05, duplicate_share=0.01),
        GeneratorOptions(**opts),
        truth_path=truth,
    )
    engine.run(count=count)
    engine.close()
    return engine


def consumer_for(settings: Settings, topic: str, trigger: BatchTrigger) -> BatchConsumer:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    return BatchConsumer(
        name="pageviews-test",
        topics=[topic],
        handler=PageViewHandler(settings),
        consumer_conf=consumer_config(settings, f"g-{topic}"),
        dlq_producer=EventProducer(producer_config(settings)),
        trigger=trigger,
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=ClickHouseIntentLog(settings),
        backoff_initial=0.1,
        backoff_max=1.0,
    )
