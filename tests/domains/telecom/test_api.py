"""HTTP and gRPC: identical answers, equal to the ground truth; the Redis cache refreshed
after new aggregates; token auth; rate limiting."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.telecom.api import queries_dep, router
from clickflow.domains.telecom.config import TelecomConfig
from clickflow.domains.telecom.grpc_server import start_server
from clickflow.domains.telecom.pipeline import build_aggregate, build_ingest
from clickflow.domains.telecom.proto import telecom_pb2 as pb
from clickflow.domains.telecom.proto import telecom_pb2_grpc as pb_grpc
from clickflow.domains.telecom.queries import TelecomQueries
from clickflow.pipelines import PipelineOptions
from clickflow.runtime.ports import free_port

from .support import Truth, batch_of, encode_all, make_events

START = datetime(2030, 11, 20, tzinfo=UTC)
SPAN = timedelta(days=20)  # crosses the November / December boundary


class Env:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.truth = Truth()
        self.ingest = build_ingest(settings, PipelineOptions())
        self.aggregate = build_aggregate(settings, PipelineOptions())
        app = FastAPI()
        app.state.settings = settings
        app.include_router(router)
        self.app = app
        self.http = TestClient(app)
        self.grpc_server = start_server(settings, port=(port := free_port()))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.TelecomUsageStub(self.channel)

    def feed(self, events: list[dict]) -> None:
        """Through the pipelines' handlers, as the consumers would."""
        batch = batch_of(encode_all(events))
        assert self.ingest.handle(batch) == []
        assert self.aggregate.handle(batch) == []
        for e in events:
            self.truth.add(e)

    def close(self) -> None:
        self.http.close()
        self.channel.close()
        self.grpc_server.stop(grace=None)


@pytest.fixture
def env(tc_settings: Settings) -> Iterator[Env]:
    e = Env(tc_settings)
    e.feed(make_events(3000, START, SPAN, users=20, seed=11))
    yield e
    e.close()


def grpc_detail(msg: pb.UserDetailResponse) -> dict:
    return {
        "user_id": msg.user_id,
        "from": getattr(msg, "from"),
        "to": msg.to,
        "events": [
            {
                "source_id": e.source_id,
                "event_id": e.event_id,
                "type": e.type,
                "started_at": e.started_at,
                "ended_at": e.ended_at,
                "duration_sec": e.duration_sec,
                "bytes_up": e.bytes_up,
                "bytes_down": e.bytes_down,
                "meta": orjson.loads(e.meta_json),
            }
            for e in msg.events
        ],
        "totals": [
            {
                "type": t.type,
                "events": t.events,
                "duration_sec": t.duration_sec,
                "bytes_up": t.bytes_up,
                "bytes_down": t.bytes_down,
            }
            for t in msg.totals
        ]
        if msg.has_totals
        else None,
        "next_cursor": msg.next_cursor or None,
    }


def grpc_agg(msg: pb.GlobalAggResponse) -> dict:
    return {
        "granularity": msg.granularity,
        "from": getattr(msg, "from"),
        "to": msg.to,
        "type": msg.type or None,
        "rows": [
            {
                "period": r.period,
                "type": r.type,
                "events": r.events,
                "duration_sec": r.duration_sec,
                "bytes_up": r.bytes_up,
                "bytes_down": r.bytes_down,
            }
            for r in msg.rows
        ],
    }


def agg_request(**kw: str) -> pb.GlobalAggRequest:
    req = pb.GlobalAggRequest(granularity=kw.get("granularity", ""), to=kw.get("to", ""))
    req.type = kw.get("type", "")
    setattr(req, "from", kw.get("from", ""))  # noqa: B010
    return req


def test_user_detail_pages_match_truth_over_http_and_grpc(env: Env) -> None:
    frm, to = "2030-11-25T00:00:00Z", "2030-12-05T00:00:00Z"
    for user in sorted({e["user_id"] for e in env.truth.events.values()})[:4]:
        expected = sorted(
            (
                e
                for e in env.truth.events.values()
                if e["user_id"] == user and frm <= e["started_at"] < to
            ),
            key=lambda e: (e["started_at"], e["source_id"], e["event_id"]),
            reverse=True,
        )
        pages_http, pages_grpc, cursor = [], [], None
        while True:
            params = {"from": frm, "to": to, "limit": 37}
            if cursor:
                params["cursor"] = cursor
            r = env.http.get(f"/api/v1/users/{user}/detail", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            req = pb.UserDetailRequest(user_id=user, to=to, limit=37, cursor=cursor or "")
            setattr(req, "from", frm)  # noqa: B010  # a Python keyword
            g = env.stub.GetUserDetail(req)
            assert grpc_detail(g) == page
            pages_http.append(page)
            pages_grpc.append(g)
            cursor = page["next_cursor"]
            if not cursor:
                break
        got = [e for p in pages_http for e in p["events"]]
        assert [(e["source_id"], e["event_id"]) for e in got] == [
            (e["source_id"], e["event_id"]) for e in expected
        ]
        assert got == [{k: v for k, v in e.items() if k != "user_id"} for e in expected]
        totals = {t["type"]: t for t in pages_http[0]["totals"]}
        for kind in {e["type"] for e in expected}:
            mine = [e for e in expected if e["type"] == kind]
            assert totals[kind]["events"] == len(mine)
            assert totals[kind]["bytes_down"] == sum(e["bytes_down"] for e in mine)
        assert all(p["totals"] is None for p in pages_http[1:])


def expected_rows(truth: Truth, granularity: str, frm: str, to: str, kind: str | None) -> list:
    sums = truth.global_day() if granularity == "day" else truth.global_month()
    rows = [
        {
            "period": period,
            "type": t,
            "events": v[0],
            "duration_sec": v[1],
            "bytes_up": v[2],
            "bytes_down": v[3],
        }
        for (period, t), v in sums.items()
        if frm <= period <= to and (kind is None or t == kind)
    ]
    return sorted(rows, key=lambda r: (r["period"], r["type"]))


@pytest.mark.parametrize(
    ("granularity", "frm", "to", "kind"),
    [
        ("day", "2030-11-28", "2030-12-03", None),
        ("day", "2030-11-01", "2030-12-31", "DATA"),
        ("month", "2030-11-01", "2030-12-31", None),
        ("month", "2030-12-01", "2030-12-01", "SMS_SENT"),
    ],
)
def test_global_aggregates_match_truth_over_http_and_grpc(
    env: Env, granularity: str, frm: str, to: str, kind: str | None
) -> None:
    params = {"granularity": granularity, "from": frm, "to": to}
    if kind:
        params["type"] = kind
    r = env.http.get("/api/v1/aggregates", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == expected_rows(env.truth, granularity, frm, to, kind)
    assert body["rows"], "the window must contain data"
    g = env.stub.GetGlobalAgg(agg_request(**params))
    assert grpc_agg(g) == body


def test_cache_is_refreshed_after_new_data(env: Env) -> None:
    params = {"granularity": "day", "from": "2030-11-20", "to": "2030-12-31"}
    first = env.http.get("/api/v1/aggregates", params=params)
    second = env.http.get("/api/v1/aggregates", params=params)
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert first.json() == second.json()
    g, call = env.stub.GetGlobalAgg.with_call(agg_request(**params))
    assert dict(call.trailing_metadata())["x-cache"] == "hit"
    assert grpc_agg(g) == first.json()

    env.feed(make_events(500, datetime(2030, 12, 2, tzinfo=UTC), timedelta(days=3), seed=12))
    third = env.http.get("/api/v1/aggregates", params=params)
    assert third.headers["X-Cache"] == "miss"
    rows = expected_rows(env.truth, "day", params["from"], params["to"], None)
    assert third.json()["rows"] == rows
    assert third.json() != first.json()
    assert grpc_agg(env.stub.GetGlobalAgg(agg_request(**params))) == third.json()
    # A redelivered batch changes no aggregate: the cached answer stays valid.
    env.aggregate.handle(batch_of(encode_all(list(env.truth.events.values())[:100])))
    assert env.http.get("/api/v1/aggregates", params=params).headers["X-Cache"] == "hit"


def test_bad_requests_are_refused(env: Env) -> None:
    r = env.http.get("/api/v1/users/x/detail", params={"cursor": "not-a-cursor"})
    assert r.status_code == 422
    r = env.http.get("/api/v1/aggregates", params={"type": "MMS"})
    assert r.status_code == 422
    with pytest.raises(grpc.RpcError) as e:
        env.stub.GetGlobalAgg(agg_request(type="MMS"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_token_is_required_when_configured(tc_settings: Settings) -> None:
    settings = tc_settings.model_copy(update={"api_token": "s3cret"})
    e = Env(settings)
    try:
        assert e.http.get("/api/v1/aggregates").status_code == 401
        ok = e.http.get("/api/v1/aggregates", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        with pytest.raises(grpc.RpcError) as err:
            e.stub.GetGlobalAgg(agg_request())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        e.stub.GetGlobalAgg(agg_request(), metadata=[("authorization", "Bearer s3cret")])
    finally:
        e.close()


def test_rate_limit_answers_429(tc_settings: Settings) -> None:
    e = Env(tc_settings)
    limited = TelecomQueries(tc_settings, TelecomConfig(rate_limit_per_s=0.5, rate_limit_burst=3))
    e.app.dependency_overrides[queries_dep] = lambda: limited
    headers = {"Authorization": f"Bearer {uuid.uuid4().hex}"}  # its own bucket
    try:
        codes = [e.http.get("/api/v1/aggregates", headers=headers).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = e.http.get("/api/v1/aggregates", headers=headers)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        limited.close()
        e.close()
