"""The adclicks pipeline and API against the real broker and chDB, checked against truth
computed from the generated clicks (late clicks, copies, broken records, filters)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from clickflow.config import Settings
from clickflow.domains.adclicks import api
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import pipeline_spec
from clickflow.domains.adclicks.reconcile import reconcile
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config
from clickflow.kafka.topics import dlq_topic
from clickflow.migrations import migrate_clickhouse
from clickflow.pipelines import PipelineOptions, build_consumer
from clickflow.stores.clickhouse import clickhouse_client

from .support import MINUTE_MS, make_stream, produce


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def run_pipeline(
    settings: Settings,
    cfg: AdClicksConfig,
    total: int,
    delivery: Delivery = Delivery.EXACTLY_ONCE,
    group: str | None = None,
) -> None:
    migrate_clickhouse(settings, ["adclicks"])
    opts = PipelineOptions(BatchTrigger(max_records=1500, max_seconds=0.3), delivery, group)
    consumer = build_consumer(settings, pipeline_spec(cfg), opts)
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 180  # generous: a busy machine
    while consumer.stats.records < total and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    t.join(30)
    assert not t.is_alive()
    assert consumer.stats.records == total


@pytest.fixture(scope="module")
def loaded(base_settings: Settings, redis_url: str):
    """One stream through the pipeline, shared by the read-only API tests of this module."""
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    settings = base_settings.model_copy(
        update={"clickhouse_database": f"t_{uuid.uuid4().hex[:12]}", "redis_url": redis_url}
    )
    cfg = AdClicksConfig(topic=topic, allowed_lateness_s=15, popular_cache_s=30)
    stream = make_stream(12_000, seed=21, topic=topic)
    before = {n: _metric(f"clickflow_adclicks_{n}_total") for n in ("duplicates", "late_events")}
    build_consumer(settings, pipeline_spec(cfg))  # creates the topics (4 partitions)
    stream.sent = sum(produce(settings, topic, stream.sends).values())
    run_pipeline(settings, cfg, stream.sent)
    after = {n: _metric(f"clickflow_adclicks_{n}_total") for n in ("duplicates", "late_events")}
    app = FastAPI()
    app.state.settings = settings
    app.include_router(api.router)
    app.dependency_overrides[api.adclicks_config] = lambda: cfg
    deltas = {n: after[n] - before[n] for n in after}
    return settings, cfg, stream, TestClient(app), deltas


def test_counts_per_ad_match_truth_with_late_clicks_and_copies(loaded) -> None:
    _, _, stream, client, deltas = loaded
    start, end = stream.span_ms
    assert stream.copies > 300 and stream.late > 500
    assert deltas["duplicates"] == stream.copies  # every copy recognised, none counted
    assert deltas["late_events"] > 0.5 * stream.late
    ads = [a for a, _ in stream.top(5, start, end)] + ["ad-000001", "no-such-ad"]
    for ad in ads:
        params = {"from": _iso(start), "to": _iso(end)}
        r = client.get(f"/v1/ads/{ad}/aggregated_count", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == stream.count(ad, start, end), ad
        assert body["source"] == "aggregate"
    hot = ads[0]
    for m in range(start, end, MINUTE_MS):  # minute by minute
        r = client.get(
            f"/v1/ads/{hot}/aggregated_count", params={"from": _iso(m), "to": _iso(m + MINUTE_MS)}
        )
        assert r.json()["count"] == stream.count(hot, m, m + MINUTE_MS)


@pytest.mark.parametrize(
    ("text", "filt"),
    [
        ("country=US", {"country": {"US"}}),
        ("country=US|DE,device=mobile", {"country": {"US", "DE"}, "device": {"mobile"}}),
        ("os=ios,device=tablet|mobile", {"os": {"ios"}, "device": {"tablet", "mobile"}}),
    ],
)
def test_filters_on_aggregate_dimensions(loaded, text: str, filt: dict) -> None:
    _, _, stream, client, _ = loaded
    start, end = stream.span_ms
    for ad, _n in stream.top(3, start, end):
        r = client.get(
            f"/v1/ads/{ad}/aggregated_count",
            params={"from": _iso(start), "to": _iso(end), "filter": text},
        )
        assert r.json()["count"] == stream.count(ad, start, end, **filt)
    r = client.get(
        "/v1/ads/popular_ads",
        params={"topN": 10, "window": (end - start) // MINUTE_MS, "to": _iso(end), "filter": text},
    )
    got = [(a["ad_id"], a["count"]) for a in r.json()["ads"]]
    assert got == stream.top(10, start, end, **filt)


def test_user_and_ip_filters_are_answered_from_the_raw_store(loaded) -> None:
    _, _, stream, client, _ = loaded
    start, end = stream.span_ms
    some = next(iter(stream.valid.values()))
    for key in ("user_id", "ip"):
        filt = {key: {some[key]}}
        r = client.get(
            f"/v1/ads/{some['ad_id']}/aggregated_count",
            params={"from": _iso(start), "to": _iso(end), "filter": f"{key}={some[key]}"},
        )
        body = r.json()
        assert body["source"] == "raw"
        assert body["count"] == stream.count(some["ad_id"], start, end, **filt) >= 1
        r = client.get(
            "/v1/ads/popular_ads",
            params={
                "topN": 5,
                "window": (end - start) // MINUTE_MS,
                "to": _iso(end),
                "filter": f"{key}={some[key]},country={some['country']}",
            },
        )
        got = [(a["ad_id"], a["count"]) for a in r.json()["ads"]]
        assert got == stream.top(5, start, end, country={some["country"]}, **filt)


def test_popular_ads_last_minutes_and_cache(loaded) -> None:
    _, _, stream, client, _ = loaded
    start, end = stream.span_ms
    for window in (1, 2):
        params = {"topN": 20, "window": window, "to": _iso(end - MINUTE_MS)}
        first = client.get("/v1/ads/popular_ads", params=params).json()
        expect = stream.top(20, end - (window + 1) * MINUTE_MS, end - MINUTE_MS)
        assert [(a["ad_id"], a["count"]) for a in first["ads"]] == expect
        assert first["cached"] is False
        again = client.get("/v1/ads/popular_ads", params=params).json()
        assert again["cached"] is True and again["ads"] == first["ads"]


def test_finality_follows_the_slowest_partition_watermark(loaded) -> None:
    settings, cfg, stream, client, _ = loaded
    start, end = stream.span_ms
    body = client.get(
        f"/v1/ads/{stream.top(1, start, end)[0][0]}/aggregated_count",
        params={"from": _iso(start), "to": _iso(start + MINUTE_MS)},
    ).json()
    # Independent: per partition, the max click time it delivered, minus the lateness.
    ch = clickhouse_client(settings)
    per_partition = ch.query(
        "SELECT kafka_partition, max(click_timestamp) FROM ad_clicks_raw GROUP BY kafka_partition"
    ).result_rows
    assert len(per_partition) == 4
    wm = min(int(mx) for _, mx in per_partition) - 15_000
    expect = wm // MINUTE_MS * MINUTE_MS - MINUTE_MS
    assert body["final_through"] == _iso(expect).replace("+00:00", "Z")
    assert body["final"] is True
    last = client.get(
        f"/v1/ads/{stream.top(1, start, end)[0][0]}/aggregated_count",
        params={"from": _iso(end - MINUTE_MS), "to": _iso(end)},
    ).json()
    assert last["final"] is False


def test_broken_and_future_clicks_go_to_the_dlq(loaded) -> None:
    settings, cfg, stream, _, _ = loaded
    c = Consumer(consumer_config(settings, f"dlq-reader-{uuid.uuid4().hex}"))
    c.subscribe([dlq_topic(cfg.topic)])
    got = []
    deadline = time.monotonic() + 120  # generous: a busy machine
    while len(got) < stream.broken and time.monotonic() < deadline:
        got += [m for m in c.consume(500, 0.5) if m.error() is None]
    c.close()
    assert len(got) == stream.broken
    reasons = {dict(m.headers())["dlq.reason"].split(b":")[0] for m in got}
    assert b"malformed JSON" in reasons and b"invalid click" in reasons


@pytest.mark.parametrize(
    "evil",
    [
        "country=US' OR 1=1 --",
        "country=US') OR ('1'='1",
        "country=US\\' OR 1=1",
        "device=mobile}; DROP TABLE ad_clicks_minute; --",
        "user_id=x' UNION SELECT 1 --",
    ],
)
def test_injection_in_filter_values_is_just_a_value(loaded, evil: str) -> None:
    _, _, stream, client, _ = loaded
    start, end = stream.span_ms
    hot = stream.top(1, start, end)[0][0]
    r = client.get(
        f"/v1/ads/{hot}/aggregated_count",
        params={"from": _iso(start), "to": _iso(end), "filter": evil},
    )
    assert r.status_code == 200 and r.json()["count"] == 0
    r = client.get(
        "/v1/ads/popular_ads", params={"topN": 5, "window": 60, "to": _iso(end), "filter": evil}
    )
    assert r.status_code == 200 and r.json()["ads"] == []
    # The tables are intact.
    ok = client.get(
        f"/v1/ads/{hot}/aggregated_count", params={"from": _iso(start), "to": _iso(end)}
    )
    assert ok.json()["count"] == stream.count(hot, start, end)


@pytest.mark.parametrize(
    "evil",
    [
        "country) OR 1=1 --=US",
        "clicks=1",
        "1=1",
        "country",
        "country=US,country=DE",
        "country=",
    ],
)
def test_unknown_or_malformed_filter_keys_are_refused(loaded, evil: str) -> None:
    _, _, _, client, _ = loaded
    r = client.get("/v1/ads/ad-1/aggregated_count", params={"filter": evil})
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "filter"


def test_injection_in_ad_id_is_just_an_id(loaded) -> None:
    _, _, stream, client, _ = loaded
    start, end = stream.span_ms
    r = client.get(
        "/v1/ads/x' OR '1'='1/aggregated_count", params={"from": _iso(start), "to": _iso(end)}
    )
    assert r.status_code == 200 and r.json()["count"] == 0


def test_backfill_finds_and_repairs_a_damaged_aggregate(loaded) -> None:
    settings, _, stream, client, _ = loaded
    start, end = stream.span_ms
    ch = clickhouse_client(settings)
    s, e = datetime.fromtimestamp(start / 1000, UTC), datetime.fromtimestamp(end / 1000, UTC)
    clean = reconcile(ch, s, e, apply=False)
    assert clean.differences == [] and clean.raw_clicks == len(stream.valid)
    assert clean.raw_duplicates == 0
    hot = stream.top(1, start, end)[0][0]
    minute = datetime.fromtimestamp(start / 1000 + 60, UTC)
    ch.insert(
        "ad_clicks_minute",
        [[minute, hot, "US", "mobile", "android", 7], [minute, "ghost-ad", "FR", "tv", "linux", 3]],
        column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
    )
    damaged = reconcile(ch, s, e, apply=True)
    assert {(d.ad_id, d.truth - d.stored) for d in damaged.differences} == {
        (hot, -7),
        ("ghost-ad", -3),
    }
    assert reconcile(ch, s, e, apply=False).differences == []
    r = client.get(f"/v1/ads/{hot}/aggregated_count", params={"from": _iso(start), "to": _iso(end)})
    assert r.json()["count"] == stream.count(hot, start, end)


def test_scheduled_backfill_reports_the_differences_as_metrics(loaded) -> None:
    """One run of `backfill --every`: bounded by the group's committed offsets (read from
    the broker), finds a damaged bucket, corrects it, and says so in its metrics."""
    from clickflow.domains.adclicks.reconcile import scheduled_run

    settings, cfg, stream, client, _ = loaded
    start, end = stream.span_ms
    minute = datetime.fromtimestamp(start / 1000 + 120, UTC)
    clickhouse_client(settings).insert(
        "ad_clicks_minute",
        [[minute, "ghost-ad-2", "DE", "tv", "linux", 5]],
        column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
    )
    runs = _metric("clickflow_adclicks_reconcile_runs_total")
    lookback = time.time() - start / 1000 + 120
    first = scheduled_run(settings, cfg, "clickflow-adclicks", lookback, apply=True)
    assert [(d.ad_id, d.delta) for d in first.differences] == [("ghost-ad-2", -5)]
    assert first.unstable == 0  # everything was committed
    assert _metric("clickflow_adclicks_reconcile_differences") == 1
    assert _metric("clickflow_adclicks_reconcile_clicks_off") == 5
    second = scheduled_run(settings, cfg, "clickflow-adclicks", lookback, apply=True)
    assert second.differences == [] and _metric("clickflow_adclicks_reconcile_differences") == 0
    assert _metric("clickflow_adclicks_reconcile_runs_total") == runs + 2


def test_another_group_rereading_the_topic_counts_nothing_twice(loaded) -> None:
    """Runs last in this module: a new group (at-least-once, then exactly-once) re-reads the
    whole topic into the same store; every record is a replay and is dropped."""
    settings, cfg, stream, client, _ = loaded
    start, end = stream.span_ms
    before = _metric("clickflow_adclicks_replays_total")
    for delivery in (Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE):
        run_pipeline(settings, cfg, stream.sent, delivery, f"again-{uuid.uuid4().hex[:6]}")
    assert _metric("clickflow_adclicks_replays_total") - before == 2 * len(stream.valid)
    ch = clickhouse_client(settings)
    assert ch.query("SELECT count() FROM ad_clicks_raw").result_rows[0][0] == len(stream.valid)
    assert ch.query("SELECT sum(clicks) FROM ad_clicks_minute").result_rows[0][0] == len(
        stream.valid
    )
    hot = stream.top(1, start, end)[0][0]
    r = client.get(f"/v1/ads/{hot}/aggregated_count", params={"from": _iso(start), "to": _iso(end)})
    assert r.json()["count"] == stream.count(hot, start, end)
