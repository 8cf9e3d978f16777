"""The UGC query routes over data loaded through the real pipeline, against Python truth."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.ugc.api import router
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.kafka.batch import BatchTrigger
from clickflow.migrations import migrate_clickhouse

from .support import BASE_TS, Tracking, produce, run_pipeline, ugc_config

HOUR = 3_600_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@pytest.fixture
def loaded(settings: Settings, redis_url: str, topic: str) -> tuple[Settings, list[dict]]:
    s = settings.model_copy(update={"redis_url": redis_url, "api_token": "secret"})
    migrate_clickhouse(s, ["ugc"])
    factory = UgcEventFactory(users=50, videos=20, max_end_delay=20, topic=topic, seed=1)
    rng = random.Random(2)
    # 600 events over 10 hours, then the queued halves; 30 exact re-sends.
    values = [factory.valid(rng, (BASE_TS + i * 60_000) / 1000).value for i in range(600)]
    values += [e.value for e in factory.pending()]
    values += rng.sample(values, 30)
    handler = Tracking(UgcHandler(s, ugc_config(topic), background_sweep=False))
    last = produce(s, topic, values)
    trigger = BatchTrigger(max_records=500, max_seconds=0.2)
    run_pipeline(s, handler, lambda: handler.reached(last), trigger, f"g-{topic}")
    unique = {r["event_id"]: r for r in map(orjson.loads, values)}
    return s, list(unique.values())


def test_routes_answer_from_clickhouse(loaded: tuple[Settings, list[dict]]) -> None:
    settings, events = loaded
    app = FastAPI()
    app.state.settings = settings
    app.include_router(router)
    client = TestClient(app)
    lo, hi = BASE_TS + 2 * HOUR, BASE_TS + 6 * HOUR
    params = {"start": iso(lo), "end": iso(hi)}
    auth = {"Authorization": "Bearer secret"}
    assert client.get("/v1/ugc/clicks", params=params).status_code == 401

    def in_range(kind: str) -> list[dict]:
        return [e for e in events if e["event"] == kind and lo <= e["timestamp"] < hi]

    clicks = client.get("/v1/ugc/clicks", params=params, headers=auth).json()
    truth = Counter(
        (e["data"]["element_type"], e["data"]["page_type"]) for e in in_range("element_click")
    )
    assert {(c["element_type"], c["page_type"]): c["clicks"] for c in clicks} == truth
    by_page = client.get("/v1/ugc/clicks", params={**params, "by": "page_type"}, headers=auth)
    assert {c["page_type"]: c["clicks"] for c in by_page.json()} == Counter(
        e["data"]["page_type"] for e in in_range("element_click")
    )

    # Time on page: pairs by their start (first start, first end), duration = end - start.
    starts: dict[tuple, dict] = {}
    ends: dict[tuple, dict] = {}
    for e in events:  # stream order (first occurrence), like the pipeline
        key = (e["user_id"], e["data"].get("page_view_id"))
        if e["event"] == "page_view_start":
            starts.setdefault(key, e)
        elif e["event"] == "page_view_end":
            ends.setdefault(key, e)
    durations: dict[str, list[float]] = {}
    for key, s in starts.items():
        if key in ends and lo <= s["timestamp"] < hi:
            d = max(0, ends[key]["timestamp"] - s["timestamp"]) / 1000
            durations.setdefault(s["data"]["page_type"], []).append(d)
    top = client.get("/v1/ugc/time-on-page", params=params, headers=auth).json()
    assert {t["page_type"]: t["ended"] for t in top} == {p: len(d) for p, d in durations.items()}
    for t in top:
        d = durations[t["page_type"]]
        assert t["avg_seconds"] == pytest.approx(sum(d) / len(d), abs=1e-3)

    q = client.get("/v1/ugc/quality-switches", params=params, headers=auth).json()
    assert {(x["old_quality"], x["new_quality"]): x["switches"] for x in q} == Counter(
        (e["data"]["old_quality"], e["data"]["new_quality"]) for e in in_range("quality_change")
    )
    video = in_range("quality_change")[0]["data"]["video_id"]
    one = client.get("/v1/ugc/quality-switches", params={**params, "video_id": video}, headers=auth)
    assert sum(x["switches"] for x in one.json()) == sum(
        e["data"]["video_id"] == video for e in in_range("quality_change")
    )

    comp = client.get("/v1/ugc/completions", params={**params, "limit": 1000}, headers=auth)
    assert {c["video_id"]: c["completions"] for c in comp.json()} == Counter(
        e["data"]["video_id"] for e in in_range("video_complete")
    )
    filt = client.get("/v1/ugc/search-filters", params={**params, "limit": 3}, headers=auth).json()
    truth_f = Counter(e["data"]["filters"] for e in in_range("search_filter"))
    assert [f["uses"] for f in filt] == sorted(truth_f.values(), reverse=True)[:3]

    bad = client.get("/v1/ugc/clicks", params={"start": iso(hi), "end": iso(lo)}, headers=auth)
    assert bad.status_code == 422
