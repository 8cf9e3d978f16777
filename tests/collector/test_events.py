"""POST /v1/events: every kind's schema, batches with per-event verdicts, body forms and
limits. A 202 is checked against what Kafka really holds."""

from __future__ import annotations

import gzip
import time
import uuid

import msgspec
import pytest

from clickflow.config import Settings
from clickflow.domains.ugc import events as ugc
from clickflow.domains.ugc.pipeline import decode_record
from tests.collector.conftest import StartCollector, read_raw, read_records

VALID = {
    "element_click": {"element_type": "movie", "page_type": "category"},
    "page_view_start": {"page_view_id": str(uuid.uuid4()), "page_type": "movie"},
    "page_view_end": {"page_view_id": str(uuid.uuid4()), "page_type": "promotion"},
    "quality_change": {"video_id": "v-42", "old_quality": 720, "new_quality": 1080},
    "video_complete": {"video_id": "v-42", "duration_total": True},
    "search_filter": {"search_query": "matrix", "filters": "genre=scifi;rating>7"},
}

# (kind, data, the field the collector must name)
INVALID = [
    ("element_click", {"element_type": "movie"}, "data.page_type"),
    ("element_click", {"element_type": 7, "page_type": "movie"}, "data.element_type"),
    ("page_view_start", {"page_view_id": "", "page_type": "movie"}, "data.page_view_id"),
    ("page_view_end", {"page_type": "movie"}, "data.page_view_id"),
    ("quality_change", {"video_id": "v", "old_quality": "", "new_quality": 1}, "data.old_quality"),
    ("quality_change", {"video_id": "v", "old_quality": 7, "new_quality": -1}, "data.new_quality"),
    ("video_complete", {"video_id": "v", "duration_total": "yes"}, "data.duration_total"),
    ("search_filter", {"search_query": "x", "filters": "y", "extra": 1}, "data.extra"),
    ("search_filter", {"search_query": "x"}, "data.filters"),
]  # fmt: skip


def test_the_tables_cover_every_kind() -> None:
    assert set(VALID) == set(ugc.EVENT_KINDS)
    assert {k for k, _, _ in INVALID} == set(ugc.EVENT_KINDS)


def test_every_kind_valid_is_stored_enriched(
    start_collector: StartCollector, settings: Settings, topic: str
) -> None:
    client = start_collector()
    sent = {}
    before = int(time.time() * 1000)
    for kind, data in VALID.items():
        r = client.post("/v1/events", json={"event": kind, "token": None, "data": data})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "accepted" and body["event"] == kind
        sent[body["event_id"]] = (kind, data)
    after = int(time.time() * 1000)
    values = read_raw(settings, topic, len(sent))
    assert len(values) == len(sent)
    for value in values:
        rec = msgspec.json.decode(value, type=ugc.UgcRecord)
        kind, data = sent[rec.event_id]
        assert rec.event == kind and rec.data == data
        assert rec.user_id == "anonymous"
        assert before <= rec.timestamp <= after
        assert b"token" not in value
        decoded, _ = decode_record(value)  # the UGC pipeline accepts what the collector wrote
        assert decoded.event_id == rec.event_id


@pytest.mark.parametrize(("kind", "data", "field"), INVALID)
def test_every_kind_invalid_is_refused_with_field(
    start_collector: StartCollector, kind: str, data: dict, field: str
) -> None:
    client = start_collector()
    r = client.post("/v1/events", json={"event": kind, "token": None, "data": data})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["status"] == "rejected"
    assert body["field"] == field
    assert body["reason"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event": "no_such_kind", "data": {}}, "event"),
        ({"event": "element_click"}, "data"),
        ({"event": "element_click", "data": [1]}, "data"),
        ({"event": "element_click", "data": {}, "tokn": "x"}, "tokn"),
        ({"event": 5, "data": {}}, "event"),
    ],
)
def test_envelope_errors_name_the_field(
    start_collector: StartCollector, event: dict, field: str
) -> None:
    r = start_collector().post("/v1/events", json=event)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_batch_gets_a_verdict_per_event_and_only_valid_ones_are_stored(
    start_collector: StartCollector, settings: Settings, topic: str
) -> None:
    client = start_collector()
    client_id = f"client-{uuid.uuid4()}"
    batch = [
        {"event": "element_click", "data": VALID["element_click"], "event_id": client_id},
        {"event": "quality_change", "data": {"video_id": "v", "old_quality": 1}},
        {"event": "video_complete", "token": None, "data": VALID["video_complete"]},
        {"event": "nope", "data": {}},
    ]
    r = client.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (2, 2, 0)
    res = body["results"]
    assert [x["status"] for x in res] == ["accepted", "rejected", "accepted", "rejected"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert res[0]["event_id"] == client_id  # a client event_id is kept
    assert res[1]["field"] == "data.new_quality"
    assert res[3]["field"] == "event"
    records = read_records(settings, topic, 2)
    assert sorted(r.event_id for r in records) == sorted([client_id, res[2]["event_id"]])
    time.sleep(0.3)
    assert len(read_records(settings, topic, 3, timeout=1)) == 2  # nothing else stored


def test_batch_with_nothing_valid_is_422(start_collector: StartCollector) -> None:
    r = start_collector().post("/v1/events", json=[{"event": "nope", "data": {}}])
    assert r.status_code == 422
    assert r.json()["accepted"] == 0


def test_a_new_kind_needs_only_its_struct(
    start_collector: StartCollector, settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TrailerPlay(msgspec.Struct, forbid_unknown_fields=True):
        trailer_id: str

    monkeypatch.setitem(ugc.EVENT_KINDS, "trailer_play", TrailerPlay)
    client = start_collector()
    ok = client.post("/v1/events", json={"event": "trailer_play", "data": {"trailer_id": "t1"}})
    assert ok.status_code == 202, ok.text
    bad = client.post("/v1/events", json={"event": "trailer_play", "data": {"trailer": "t1"}})
    assert bad.status_code == 422 and bad.json()["field"] == "data.trailer"
    assert read_records(settings, topic, 1)[0].data == {"trailer_id": "t1"}


def test_gzip_and_beacon_bodies_are_accepted(
    start_collector: StartCollector, settings: Settings, topic: str
) -> None:
    client = start_collector()
    one = {"event": "element_click", "data": VALID["element_click"]}
    batch = [one] * 3
    r = client.post(
        "/v1/events",
        content=gzip.compress(msgspec.json.encode(batch)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
    # navigator.sendBeacon(url, JSON.stringify(event)) sends text/plain;charset=UTF-8
    r = client.post(
        "/v1/events",
        content=msgspec.json.encode(one),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202, r.text
    assert len(read_records(settings, topic, 4)) == 4


def test_bad_bodies(start_collector: StartCollector) -> None:
    client = start_collector()
    post = client.post
    assert post("/v1/events", content=b"{not json", headers=_json).status_code == 400
    assert post("/v1/events", content=b"42", headers=_json).status_code == 400
    assert post("/v1/events", content=b"[]", headers=_json).status_code == 400
    r = post("/v1/events", content=b"{}", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415
    r = post("/v1/events", content=b"{}", headers={**_json, "Content-Encoding": "br"})
    assert r.status_code == 415
    r = post(
        "/v1/events", content=b"\x1f\x8bnot gzip", headers={**_json, "Content-Encoding": "gzip"}
    )
    assert r.status_code == 400


_json = {"Content-Type": "application/json"}


def test_oversized_bodies_get_413(start_collector: StartCollector) -> None:
    client = start_collector(options={"max_body_bytes": 10_000, "max_batch_events": 5})
    one = {"event": "element_click", "data": VALID["element_click"]}
    # too many events
    r = client.post("/v1/events", json=[one] * 6)
    assert r.status_code == 413, r.text
    assert client.post("/v1/events", json=[one] * 5).status_code == 202
    # too many bytes, declared by Content-Length
    big = {"event": "search_filter", "data": {"search_query": "x" * 20_000, "filters": ""}}
    assert client.post("/v1/events", json=big).status_code == 413
    # too many bytes, chunked (no Content-Length)
    body = msgspec.json.encode(big)
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    assert client.post("/v1/events", content=chunks, headers=_json).status_code == 413
    # a gzip bomb: 10 MB of spaces in ~10 kB, refused after inflating ~10 kB
    bomb = gzip.compress(b"[" + b" " * 10_000_000 + b"]")
    assert len(bomb) < 10_000
    r = client.post("/v1/events", content=bomb, headers={**_json, "Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
