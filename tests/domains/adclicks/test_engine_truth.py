"""The traffic engine's own truth file as the reference: engine (round-robin partitioner,
so copies land on other partitions) -> pipeline -> API, answers compared with the truth."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.adclicks import api
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import pipeline_spec
from clickflow.domains.adclicks.traffic import AdClickFactory
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from clickflow.kafka.batch import BatchTrigger
from clickflow.migrations import migrate_clickhouse
from clickflow.pipelines import PipelineOptions, build_consumer

MINUTE_MS = 60_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_engine_traffic_through_the_pipeline_matches_the_truth_file(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"redis_url": redis_url})
    topic = f"adclicks-eng-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, popular_cache_s=0)
    factory = AdClickFactory(ads=200, late_share=0.1, late_delay_s=(5, 90), topic=topic)
    truth_path = tmp_path / "truth.jsonl"
    engine = Engine(
        settings,
        factory,
        "adclicks",
        rate_model=RateModel(mode="fixed", rate=6000),
        mix=Mix(broken_share=0.03, duplicate_share=0.06),
        options=GeneratorOptions(partitioner="round-robin", seed=3),
        truth_path=truth_path,
    )
    stats = engine.run(count=12_000)
    engine.close()
    lines = read_truth(truth_path)
    assert len(lines) == 12_000 and stats.duplicates > 300

    clicks = {ln["id"]: ln["truth"] for ln in lines if ln["broken"] is None}
    copies = sum(1 for ln in lines if ln["dup"])
    home = {ln["id"]: ln["partition"] for ln in lines if not ln["dup"]}
    moved = [ln for ln in lines if ln["dup"] and ln["partition"] != home.get(ln["id"])]
    assert len(clicks) == 12_000 - copies - sum(1 for ln in lines if ln["broken"])
    assert len(moved) > 100  # copies on another partition than their original

    migrate_clickhouse(settings, ["adclicks"])
    opts = PipelineOptions(trigger=BatchTrigger(max_records=2000, max_seconds=0.3))
    consumer = build_consumer(settings, pipeline_spec(cfg), opts)
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 180  # generous: a busy machine
    while consumer.stats.records < len(lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    t.join(30)
    assert consumer.stats.records == len(lines)
    assert consumer.stats.dead_letters == sum(1 for ln in lines if ln["broken"])

    app = FastAPI()
    app.state.settings = settings
    app.include_router(api.router)
    app.dependency_overrides[api.adclicks_config] = lambda: cfg
    client = TestClient(app)

    ts = [c["click_timestamp"] for c in clicks.values()]
    start = min(ts) // MINUTE_MS * MINUTE_MS
    end = (max(ts) // MINUTE_MS + 1) * MINUTE_MS
    per_ad = Counter(c["ad_id"] for c in clicks.values())
    for ad, n in per_ad.most_common(8):
        r = client.get(
            f"/v1/ads/{ad}/aggregated_count", params={"from": _iso(start), "to": _iso(end)}
        )
        assert r.json()["count"] == n, ad
    us_mobile = Counter(
        c["ad_id"] for c in clicks.values() if c["country"] == "US" and c["device"] == "mobile"
    )
    r = client.get(
        "/v1/ads/popular_ads",
        params={
            "topN": 15,
            "window": (end - start) // MINUTE_MS,
            "to": _iso(end),
            "filter": "country=US,device=mobile",
        },
    )
    expect = sorted(us_mobile.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    assert [(a["ad_id"], a["count"]) for a in r.json()["ads"]] == expect
