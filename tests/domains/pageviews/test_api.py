"""The page-view query routes (`top`, `pages/{page_id}`, `series`, `totals`, `errors`)
answer what the events sent through the real broker, consumer and chDB say.

The expected answers are computed here, in Python, from the JSON the test sent (each
record's partition and offset come from the broker's delivery reports); nothing is read back
from the store to build them. Re-sent copies, broken records and page ids with slashes,
spaces, quotes and non-ASCII letters go through the pipeline with the rest.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.pageviews import api
from clickflow.kafka.batch import BatchTrigger
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

from .support import consumer_for

PAGES = [
    "/home",
    "/catalog/1",
    "/catalog/2",
    "/blog/a b",
    "/search?q=x&y='1'",
    "/страница/ü",
    "plain",
    "100%",
]
USERS = [f"u{i}" for i in range(40)]
NOW_S = int(time.time())
HOUR = 3600
# Three groups of event times: the last half hour (what the default range shows), two to
# three hours ago (more than one hour window), and two days ago (minute table TTL: 7 days).
GROUPS = [
    (NOW_S - 30 * 60, NOW_S - 60),
    (NOW_S - 3 * HOUR, NOW_S - 2 * HOUR),
    (NOW_S - 2 * 24 * HOUR - HOUR, NOW_S - 2 * 24 * HOUR),
]
LONG_REASON_TEXT = "x" * 700  # a broken record longer than the 500 characters /errors shows


@dataclass
class View:
    page: str
    user: str
    ms: int
    bounce: bool
    ts_ms: int

    def window(self, granularity: str) -> int:
        size = 60 if granularity == "minute" else HOUR
        return self.ts_ms // 1000 // size * size


@dataclass
class Sent:
    views: list[View] = field(default_factory=list)  # unique valid events
    broken: dict[tuple[int, int], tuple[bytes, str]] = field(default_factory=dict)
    copies: int = 0


def _iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _records(rng: random.Random) -> tuple[list[bytes], list[View | None], list[str | None]]:
    """The values to send, in order; for each the valid view (None for a copy or a broken
    record) and the field a broken record's DLQ reason must name."""
    values: list[bytes] = []
    views: list[View | None] = []
    fields: list[str | None] = []
    seen: set[bytes] = set()
    for lo, hi in GROUPS:
        for _ in range(700):
            page = PAGES[min(int(rng.expovariate(0.5)), len(PAGES) - 1)]
            bounce = rng.random() < 0.2
            view = View(
                page=page,
                user=rng.choice(USERS),
                ms=rng.randint(100, 3000) if bounce else rng.randint(5_000, 600_000),
                bounce=bounce,
                ts_ms=rng.randint(lo * 1000, hi * 1000),
            )
            value = orjson.dumps(
                {
                    "page_id": view.page,
                    "user_id": view.user,
                    "view_duration_ms": view.ms,
                    "timestamp": _iso_ms(view.ts_ms).replace("+00:00", "Z"),
                    "is_bounce": view.bounce,
                    "user_agent": "Mozilla/5.0",
                    "ip_address": f"203.0.113.{rng.randint(1, 254)}",
                    "region": "eu-west",
                }
            )
            if value in seen:  # the same bytes twice would be one event
                continue
            seen.add(value)
            values.append(value)
            views.append(view)
            fields.append(None)
            if rng.random() < 0.03:  # a re-sent copy: the same bytes again, later
                values.append(value)
                views.append(None)
                fields.append(None)
    good = {
        "page_id": "/home",
        "user_id": "u1",
        "view_duration_ms": 1500,
        "timestamp": _iso_ms((NOW_S - 600) * 1000).replace("+00:00", "Z"),
        "is_bounce": False,
    }
    broken = [
        (orjson.dumps({**good, "page_id": ""}), "page_id"),
        (orjson.dumps({**good, "view_duration_ms": -5}), "view_duration_ms"),
        (orjson.dumps({**good, "user_id": " "}), "user_id"),
        (orjson.dumps({**good, "ip_address": "not-an-ip"}), "ip_address"),
        (orjson.dumps({**good, "page_id": "", "user_agent": LONG_REASON_TEXT}), "page_id"),
        (b'{"page_id": "/home", "user_id": ', "malformed JSON"),
    ]
    for value, reason in broken:
        at = rng.randrange(len(values))
        values.insert(at, value)
        views.insert(at, None)
        fields.insert(at, reason)
    return values, views, fields


def _send(settings: Settings, topic: str, values: list[bytes]) -> list[tuple[int, int]]:
    """Sends in order; the (partition, offset) of each record, from its delivery report."""
    producer = EventProducer(producer_config(settings))
    landed: list[tuple[int, int] | None] = [None] * len(values)

    def done(i: int):
        def report(err, msg) -> None:
            assert err is None, err
            landed[i] = (msg.partition(), msg.offset())

        return report

    for i, value in enumerate(values):
        producer.send(topic, value, key=f"k{i % 13}".encode(), on_delivery=done(i))
    assert producer.flush(60) == 0
    assert None not in landed
    return landed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def loaded(base_settings: Settings, redis_url: str) -> tuple[TestClient, Sent]:
    """One stream through the pipeline, shared by this module's read-only route tests."""
    settings = base_settings.model_copy(
        update={"clickhouse_database": f"t_{uuid.uuid4().hex[:12]}", "redis_url": redis_url}
    )
    topic = f"pv-api-{uuid.uuid4().hex[:8]}"
    migrate_clickhouse(settings, ["pageviews"])
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    values, views, fields = _records(random.Random(41))
    landed = _send(settings, topic, values)
    sent = Sent()
    for value, view, reason, where in zip(values, views, fields, landed, strict=True):
        if view is not None:
            sent.views.append(view)
        elif reason is not None:
            sent.broken[where] = (value, reason)
        else:
            sent.copies += 1
    assert sent.copies > 0

    consumer = consumer_for(settings, topic, BatchTrigger(max_records=500, max_seconds=0.3))
    ch = clickhouse_client(settings)
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 180  # generous: the machine may be busy
        while ch.command("SELECT count() FROM page_views_raw") < len(sent.views) or ch.command(
            "SELECT count() FROM processing_errors"
        ) < len(sent.broken):
            assert runner.is_alive(), "the consumer stopped"
            assert time.monotonic() < deadline, "the pipeline did not store every record"
            time.sleep(0.2)
    finally:
        consumer.stop()
        runner.join(30)
    assert ch.command("SELECT count() FROM page_views_raw") == len(sent.views)

    app = FastAPI()
    app.state.settings = settings
    app.include_router(api.router)
    return TestClient(app), sent


# -- the truth, computed from what was sent -------------------------------------------------


def _stats(views: list[View]) -> dict:
    n = len(views)
    return {
        "views": n,
        "avg_duration_ms": sum(v.ms for v in views) / n if n else 0,
        "unique_users": len({v.user for v in views}),
        "bounce_rate": sum(v.bounce for v in views) / n if n else 0,
    }


def _in(views: list[View], granularity: str, start: int, end: int) -> list[View]:
    """The views of the windows that start in [start, end)."""
    return [v for v in views if start <= v.window(granularity) < end]


def _grouped(views: list[View], key) -> dict:
    out: dict = defaultdict(list)
    for v in views:
        out[key(v)].append(v)
    return out


def _approx(row: dict) -> dict:
    return {k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in row.items()}


def _ts(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp())


ALL = {"from": _iso(NOW_S - 3 * 24 * HOUR), "to": _iso(NOW_S + 60)}
# From the middle of the older group to the middle of the recent one: cuts through windows
# of both (and holds at least one whole hour window with events).
PART = {"from": _iso((NOW_S - 150 * 60) // 60 * 60), "to": _iso(NOW_S - 10 * 60)}
RANGES = {"all": ALL, "part": PART}


def _bounds(params: dict) -> tuple[int, int]:
    return _ts(params["from"]), _ts(params["to"])


# -- the routes -----------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["minute", "hour"])
@pytest.mark.parametrize("span", ["all", "part"])
def test_totals_match_the_events_sent(loaded, granularity: str, span: str) -> None:
    client, sent = loaded
    params = {**RANGES[span], "granularity": granularity}
    got = client.get("/v1/pageviews/totals", params=params)
    assert got.status_code == 200, got.text
    views = _in(sent.views, granularity, *_bounds(params))
    assert views, "the range must hold events to test anything"
    want = {**_stats(views), "pages": len({v.page for v in views})}
    assert got.json() == _approx(want)


def test_totals_default_to_the_last_hour(loaded) -> None:
    client, sent = loaded
    got = client.get("/v1/pageviews/totals")
    assert got.status_code == 200, got.text
    recent = [v for v in sent.views if v.ts_ms // 1000 >= GROUPS[0][0]]
    assert 0 < len(recent) < len(sent.views)
    assert got.json() == _approx({**_stats(recent), "pages": len({v.page for v in recent})})


def test_totals_of_an_empty_range_are_zero(loaded) -> None:
    client, _ = loaded
    params = {"from": _iso(NOW_S - 20 * 24 * HOUR), "to": _iso(NOW_S - 19 * 24 * HOUR)}
    got = client.get("/v1/pageviews/totals", params=params)
    assert got.status_code == 200, got.text
    assert got.json() == {
        "views": 0,
        "avg_duration_ms": 0,
        "unique_users": 0,
        "bounce_rate": 0,
        "pages": 0,
    }


@pytest.mark.parametrize("order_by", ["views", "unique_users", "avg_duration_ms", "bounce_rate"])
@pytest.mark.parametrize("granularity", ["minute", "hour"])
def test_top_pages_match_the_events_sent(loaded, order_by: str, granularity: str) -> None:
    client, sent = loaded
    params = {**ALL, "granularity": granularity, "order_by": order_by, "limit": 5}
    got = client.get("/v1/pageviews/top", params=params)
    assert got.status_code == 200, got.text
    per_page = _grouped(_in(sent.views, granularity, *_bounds(ALL)), lambda v: v.page)
    rows = [{"page_id": p, **_stats(vs)} for p, vs in per_page.items()]
    rows.sort(key=lambda r: r["page_id"].encode())  # ties: page_id ascending (bytes)
    rows.sort(key=lambda r: r[order_by], reverse=True)
    assert got.json() == [_approx(r) for r in rows[:5]]


def test_top_pages_of_part_of_the_range_and_every_page(loaded) -> None:
    client, sent = loaded
    got = client.get("/v1/pageviews/top", params={**PART, "limit": 1000})
    assert got.status_code == 200, got.text
    per_page = _grouped(_in(sent.views, "minute", *_bounds(PART)), lambda v: v.page)
    want = {p: _stats(vs) for p, vs in per_page.items()}
    assert {r.pop("page_id"): r for r in got.json()} == {p: _approx(s) for p, s in want.items()}


@pytest.mark.parametrize("granularity", ["minute", "hour"])
@pytest.mark.parametrize("page", PAGES)
def test_one_page_per_window_matches_the_events_sent(loaded, page: str, granularity: str) -> None:
    client, sent = loaded
    params = {**ALL, "granularity": granularity}
    got = client.get(f"/v1/pageviews/pages/{quote(page, safe='')}", params=params)
    assert got.status_code == 200, got.text
    mine = [v for v in _in(sent.views, granularity, *_bounds(ALL)) if v.page == page]
    assert mine, f"no events of {page!r} were sent"
    windows = _grouped(mine, lambda v: v.window(granularity))
    want = [{"window_start": w, **_stats(windows[w])} for w in sorted(windows)]
    answer = [{**r, "window_start": _ts(r["window_start"])} for r in got.json()]
    assert answer == [_approx(r) for r in want]


def test_a_page_nobody_viewed_has_no_windows(loaded) -> None:
    client, _ = loaded
    got = client.get("/v1/pageviews/pages/%2Fnever%2Fseen", params=ALL)
    assert got.status_code == 200, got.text
    assert got.json() == []


@pytest.mark.parametrize("granularity", ["minute", "hour"])
@pytest.mark.parametrize("span", ["all", "part"])
def test_series_matches_the_events_sent(loaded, granularity: str, span: str) -> None:
    client, sent = loaded
    params = {**RANGES[span], "granularity": granularity}
    got = client.get("/v1/pageviews/series", params=params)
    assert got.status_code == 200, got.text
    windows = _grouped(
        _in(sent.views, granularity, *_bounds(params)), lambda v: v.window(granularity)
    )
    want = [{"window_start": w, **_stats(windows[w])} for w in sorted(windows)]
    answer = [{**r, "window_start": _ts(r["window_start"])} for r in got.json()]
    assert want, "the range must hold events to test anything"
    assert answer == [_approx(r) for r in want]


def test_errors_list_every_broken_record_with_its_reason_and_place(loaded) -> None:
    client, sent = loaded
    got = client.get("/v1/pageviews/errors", params={"limit": 500})
    assert got.status_code == 200, got.text
    rows = got.json()
    assert len(rows) == len(sent.broken)
    by_place = {(r["kafka_partition"], r["kafka_offset"]): r for r in rows}
    assert by_place.keys() == sent.broken.keys()
    for place, (value, reason) in sent.broken.items():
        row = by_place[place]
        assert row["raw_message"] == value.decode()[:500], place
        assert row["error_reason"].startswith(reason), (reason, row["error_reason"])
    times = [datetime.fromisoformat(r["error_time"]) for r in rows]
    assert times == sorted(times, reverse=True)  # latest first


def test_errors_limit_keeps_the_latest(loaded) -> None:
    client, sent = loaded
    every = client.get("/v1/pageviews/errors", params={"limit": 500}).json()
    got = client.get("/v1/pageviews/errors", params={"limit": 2})
    assert got.status_code == 200, got.text
    rows = got.json()
    assert len(rows) == 2 < len(sent.broken)
    oldest_shown = min(datetime.fromisoformat(r["error_time"]) for r in rows)
    assert all(
        datetime.fromisoformat(r["error_time"]) <= oldest_shown for r in every if r not in rows
    )
