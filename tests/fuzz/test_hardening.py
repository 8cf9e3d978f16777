"""Bad input is harmless: oversized bodies, deep nesting, gzip bombs, invalid UTF-8, huge
numbers, arbitrary bytes and JSON (Hypothesis) to the collector; SQL-injection attempts in
the filters and path parameters of the query API. Each is answered with a 4xx (an id is
just an id: looked up as such, it finds nothing) and nothing is stored or changed."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from clickflow.collector.app import create_app as create_collector
from clickflow.collector.config import CollectorConfig
from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.stores.clickhouse import clickhouse_client
from tests.chaos.harness import read_topic

LIMIT = 65_536
CLICK = {"event": "element_click", "data": {"element_type": "movie", "page_type": "movie"}}
FAST = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def quiet(collector_settings: Settings) -> Iterator[tuple[TestClient, str]]:
    """A collector on a topic of its own: whatever is refused must not show up there."""
    topic = f"hardening-{uuid.uuid4().hex[:8]}"
    ensure_topics(collector_settings.kafka_bootstrap, [TopicSpec(topic, 4)])
    opts = CollectorConfig(topic=topic, rate_per_second=0, max_body_bytes=LIMIT)
    with TestClient(create_collector(collector_settings, opts)) as client:
        yield client, topic


def _deep(n: int) -> bytes:
    return b'{"event":"element_click","data":' + b'{"a":' * n + b"1" + b"}" * n + b"}"


BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "oversized body": (json.dumps([CLICK] * 2000).encode(), {}),
    "oversized single field": (
        json.dumps({**CLICK, "data": {**CLICK["data"], "page_type": "x" * 70_000}}).encode(),
        {},
    ),
    "deep nesting (array)": (b"[" * 20_000 + b"]" * 20_000, {}),
    "deep nesting (in data)": (_deep(10_000), {}),
    "gzip bomb": (gzip.compress(b"[" + b" " * 50_000_000 + b"]"), {"Content-Encoding": "gzip"}),
    "gzip bomb of valid events": (
        gzip.compress(json.dumps([CLICK] * 30_000).encode()),
        {"Content-Encoding": "gzip"},
    ),
    "not gzip": (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}),
    "unknown encoding": (json.dumps(CLICK).encode(), {"Content-Encoding": "br"}),
    "invalid UTF-8": (
        b'{"event":"element_click","data":{"element_type":"\xff\xfe","page_type":"movie"}}',
        {},
    ),
    "invalid UTF-8 in the kind": (b'{"event":"\xc3\x28","data":{}}', {}),
    "huge integer": (
        b'{"event":"quality_change","data":{"video_id":"v1","old_quality":'
        + b"9" * 5000
        + b',"new_quality":720}}',
        {},
    ),
    "huge float": (
        b'{"event":"quality_change","data":{"video_id":"v1","old_quality":1e400,'
        b'"new_quality":720}}',
        {},
    ),
    "NaN": (
        b'{"event":"quality_change","data":{"video_id":"v1","old_quality":NaN,"new_quality":720}}',
        {},
    ),
    "negative quality": (
        json.dumps(
            {
                "event": "quality_change",
                "data": {"video_id": "v", "old_quality": -1, "new_quality": 2},
            }
        ).encode(),
        {},
    ),
    "SQL as the kind": (json.dumps({"event": "x'); DROP TABLE t; --", "data": {}}).encode(), {}),
    "empty body": (b"", {}),
    "null": (b"null", {}),
    "a bare string": (b'"element_click"', {}),
    "empty batch": (b"[]", {}),
    "too many events": (json.dumps([CLICK] * 1001).encode()[:LIMIT], {}),
    "wrong content type": (json.dumps(CLICK).encode(), {"Content-Type": "application/xml"}),
    "a bad token": (json.dumps({**CLICK, "token": "not-a-jwt"}).encode(), {}),
}


def test_collector_refuses_bad_bodies_with_4xx_and_stores_nothing(quiet) -> None:
    client, topic = quiet
    answers = {}
    for name, (body, headers) in BAD_BODIES.items():
        r = client.post(
            "/v1/events", content=body, headers={"Content-Type": "application/json", **headers}
        )
        answers[name] = r.status_code
    assert {k: s for k, s in answers.items() if not 400 <= s < 500} == {}
    assert answers["oversized body"] == answers["gzip bomb"] == 413
    assert answers["wrong content type"] == 415
    assert read_topic(quiet[0].app.state.settings, topic, 4, idle=0.5) == []
    # The same collector still takes a good event (so "nothing stored" above means something).
    assert client.post("/v1/events", json=CLICK).status_code == 202
    assert len(read_topic(quiet[0].app.state.settings, topic, 4, idle=0.5)) == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["element_click", "quality_change", "page_view_start", "x"])
        | st.text(max_size=10)
    },
    optional={
        "data": json_values,
        "token": json_values,
        "event_id": json_values,
        "extra": json_values,
    },
)


@FAST
@given(body=st.binary(max_size=3000))
def test_collector_arbitrary_bytes_never_5xx(quiet, body: bytes) -> None:
    r = quiet[0].post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 or r.status_code == 202, (body, r.status_code, r.text)


@FAST
@given(payload=json_values | envelopes | st.lists(envelopes, max_size=5))
def test_collector_arbitrary_json_never_5xx(quiet, payload) -> None:
    r = quiet[0].post("/v1/events", json=payload)
    assert r.status_code < 500, (payload, r.status_code, r.text)
    if r.status_code == 202:  # only what fits the schema gets in
        assert isinstance(payload, dict | list)


# -- the query API ---------------------------------------------------------------------------

INJECTIONS = [
    "x' OR '1'='1",
    "x' OR 1=1 --",
    "1; DROP TABLE ad_clicks_minute; --",
    "' UNION ALL SELECT name FROM system.tables --",
    "x')) OR 1=1 /*",
    "{ad:String}",
    "'; SELECT sleep(3); --",
    'x" OR ""="',
]
CANARY_AD = "ad-canary"
CANARY_MINUTE = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def seeded(api_settings: Settings, api: TestClient) -> tuple[Settings, TestClient]:
    ch = clickhouse_client(api_settings)
    ch.insert(
        "ad_clicks_minute",
        [[CANARY_MINUTE, CANARY_AD, "US", "mobile", "ios", 5]],
        column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
    )
    return api_settings, api


def _state(settings: Settings) -> tuple:
    ch = clickhouse_client(settings)
    tables = ch.query(
        "SELECT name FROM system.tables WHERE database = {d:String} ORDER BY name",
        parameters={"d": settings.clickhouse_database},
    ).result_rows
    clicks = ch.command("SELECT sum(clicks) FROM ad_clicks_minute")
    assert settings.postgres_url
    with psycopg.connect(settings.postgres_url) as conn:
        pg_tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'telecom'"
        ).fetchone()
    return tables, clicks, pg_tables


def test_sql_injection_in_filters_and_path_parameters_is_harmless(seeded) -> None:
    settings, api = seeded
    window = {"from": "2030-01-01T10:00:00Z", "to": "2030-01-01T10:05:00Z"}
    ok = api.get(f"/v1/ads/{CANARY_AD}/aggregated_count", params=window)
    assert ok.status_code == 200 and ok.json()["count"] == 5  # the canary is visible
    before = _state(settings)
    statuses: dict[str, int] = {}
    for bad in INJECTIONS:
        requests = {
            "ad path": (f"/v1/ads/{bad}/aggregated_count", window),
            "ad filter key": (
                f"/v1/ads/{CANARY_AD}/aggregated_count",
                {**window, "filter": f"{bad}=US"},
            ),
            "ad filter value": (
                f"/v1/ads/{CANARY_AD}/aggregated_count",
                {**window, "filter": f"country={bad}"},
            ),
            "popular filter": (
                "/v1/ads/popular_ads",
                {"to": window["to"], "window": 10, "filter": f"device={bad}"},
            ),
            "pageviews path": (f"/v1/pageviews/pages/{bad}", {}),
            "pageviews order": ("/v1/pageviews/top", {"order_by": bad}),
            "pageviews granularity": ("/v1/pageviews/series", {"granularity": bad}),
            "ugc by": ("/v1/ugc/clicks", {"by": bad}),
            "ugc video": ("/v1/ugc/quality-switches", {"video_id": bad}),
            "ugc start": ("/v1/ugc/completions", {"start": bad}),
            "telecom path": (f"/api/v1/users/{bad}/detail", {}),
            "telecom type": ("/api/v1/aggregates", {"type": bad}),
            "telecom cursor": ("/api/v1/users/u1/detail", {"cursor": bad}),
        }
        for name, (path, params) in requests.items():
            r = api.get(path, params=params)
            statuses[f"{name}: {bad}"] = r.status_code
            assert r.status_code < 500, (name, bad, r.text)
            if r.status_code == 200:  # looked up as a plain value: finds nothing
                body = r.json()
                if name.startswith("ad "):
                    assert body["count"] == 0, (name, bad, body)
                elif name == "popular filter":
                    assert body["ads"] == [], (name, bad, body)
    assert _state(settings) == before
    # Keys, enums, times and cursors are validated: those are 4xx.
    for key, code in statuses.items():
        if key.split(":")[0] in (
            "ad filter key",
            "pageviews order",
            "pageviews granularity",
            "ugc by",
            "ugc start",
            "telecom type",
            "telecom cursor",
        ):
            assert 400 <= code < 500, (key, code)
