"""Rate limiting per IP, Kafka down → 503 (never 202), and the ops endpoints."""

from __future__ import annotations

import time
import uuid

from prometheus_client import REGISTRY

from clickflow.config import Settings
from clickflow.runtime.ports import free_port
from tests.collector.conftest import StartCollector, read_records

CLICK = {"event": "element_click", "data": {"element_type": "movie", "page_type": "movie"}}


def test_rate_limit_per_ip_answers_429_with_retry_after(
    start_collector: StartCollector, settings: Settings, topic: str
) -> None:
    client = start_collector(
        options={"rate_per_second": 0.5, "rate_burst": 3, "trust_forwarded_for": True}
    )
    ip_a, ip_b = (f"10.{uuid.uuid4().int % 250}.0.{i}" for i in (1, 2))
    codes = [
        client.post("/v1/events", json=CLICK, headers={"X-Forwarded-For": ip_a}).status_code
        for _ in range(5)
    ]
    assert codes == [202, 202, 202, 429, 429]
    r = client.post("/v1/events", json=CLICK, headers={"X-Forwarded-For": ip_a})
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 2  # one token refills in 2 s
    # another IP has its own bucket
    assert (
        client.post("/v1/events", json=CLICK, headers={"X-Forwarded-For": ip_b}).status_code == 202
    )
    assert len(read_records(settings, topic, 4)) == 4
    time.sleep(2.1)  # a token refilled
    assert (
        client.post("/v1/events", json=CLICK, headers={"X-Forwarded-For": ip_a}).status_code == 202
    )


def test_kafka_down_answers_503_quickly_and_never_202(start_collector: StartCollector) -> None:
    client = start_collector(
        options={"publish_timeout_ms": 500}, kafka_bootstrap=f"127.0.0.1:{free_port()}"
    )
    before = (
        REGISTRY.get_sample_value("clickflow_collector_publish_errors_total", {"reason": "timeout"})
        or 0
    )
    t0 = time.monotonic()
    r = client.post("/v1/events", json=CLICK)
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 < 3.0  # publish timeout 0.5 s (+0.5 s grace)
    assert r.headers["Retry-After"] == "1" and r.json()["status"] == "failed"
    r = client.post("/v1/events", json=[CLICK, {"event": "nope", "data": {}}])
    assert r.status_code == 503
    assert [x["status"] for x in r.json()["results"]] == ["failed", "rejected"]
    after = REGISTRY.get_sample_value(
        "clickflow_collector_publish_errors_total", {"reason": "timeout"}
    )
    assert after == before + 2


def test_ops_endpoints(start_collector: StartCollector) -> None:
    client = start_collector()
    assert client.post("/v1/events", json=CLICK).status_code == 202
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["dependencies"] == {"kafka": "ok", "redis": "ok"}
    metrics = client.get("/metrics").text
    assert 'clickflow_collector_events_total{kind="element_click",verdict="accepted"}' in metrics
    assert "clickflow_collector_request_seconds_bucket" in metrics
    assert 'clickflow_collector_requests_total{status="202"}' in metrics
    spec = client.get("/openapi.json").json()
    assert "ElementClickEvent" in spec["components"]["schemas"]
    assert "/v1/events" in spec["paths"]
    for path in ("/docs", "/apidocs", "/apidocs/"):
        r = client.get(path)
        assert r.status_code == 200 and "swagger" in r.text.lower(), path


def test_concurrent_burst_gets_exactly_the_bucket(start_collector: StartCollector) -> None:
    """Requests arriving together are decided by one script call: still one token each."""
    import asyncio

    import httpx

    client = start_collector(
        options={"rate_per_second": 0.1, "rate_burst": 5, "trust_forwarded_for": True}
    )
    ip = f"10.{uuid.uuid4().int % 250}.1.1"

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=str(client.base_url)) as c:
            rs = await asyncio.gather(
                *(
                    c.post("/v1/events", json=CLICK, headers={"X-Forwarded-For": ip})
                    for _ in range(20)
                )
            )
        return [r.status_code for r in rs]

    codes = asyncio.run(burst())
    assert sorted(codes) == [202] * 5 + [429] * 15


def test_the_declared_route_serves_the_same_handler(
    collector_settings: Settings, topic: str
) -> None:
    """Reached through FastAPI's router (as when mounted elsewhere), not the direct path."""
    import asyncio

    import httpx

    from clickflow.collector.app import create_app
    from clickflow.collector.config import CollectorConfig

    app = create_app(collector_settings, CollectorConfig(topic=topic, rate_per_second=0))

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=super(type(app), app).__call__)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ok = await c.post("/v1/events", json=CLICK)
                bad = await c.post("/v1/events", json={"event": "element_click", "data": {}})
        return ok, bad

    ok, bad = asyncio.run(go())
    assert ok.status_code == 202 and ok.json()["status"] == "accepted"
    assert bad.status_code == 422 and bad.json()["field"] == "data.element_type"
    assert len(read_records(collector_settings, topic, 1)) == 1
