"""Tokens: verified by the auth service and cached in Redis for their lifetime; checked
locally (signature only, expiry ignored) when the auth service is unreachable."""

from __future__ import annotations

import time

import httpx
import jwt
import redis
from prometheus_client import REGISTRY

from clickflow.collector.auth import issue_token
from clickflow.collector.tokens import cache_key
from clickflow.config import Settings
from clickflow.runtime.ports import free_port
from tests.collector.conftest import JWT_SECRET, StartCollector, read_records

CLICK = {"element_type": "trailer", "page_type": "movie"}


def verifications(result: str) -> float:
    v = REGISTRY.get_sample_value("clickflow_auth_verifications_total", {"result": result})
    return v or 0.0


def cache_hits() -> float:
    labels = {"source": "cache", "result": "valid"}
    return REGISTRY.get_sample_value("clickflow_collector_token_checks_total", labels) or 0.0


def event(token: str | None) -> dict:
    return {"event": "element_click", "token": token, "data": CLICK}


def test_auth_service_issues_and_verifies(auth_url: str, collector_settings: Settings) -> None:
    with httpx.Client(base_url=auth_url) as c:
        issued = c.post("/token", json={"user_id": "u-1", "ttl_seconds": 60}).json()
        assert abs(issued["exp"] - (time.time() + 60)) < 5
        claims = jwt.decode(issued["token"], JWT_SECRET, algorithms=["HS256"])
        assert claims["sub"] == "u-1"
        r = c.post("/verify", json={"token": issued["token"]})
        assert r.status_code == 200 and r.json() == {"user_id": "u-1", "exp": issued["exp"]}
        expired, _ = issue_token(JWT_SECRET, "u-1", ttl_seconds=1)
        time.sleep(1.1)
        assert c.post("/verify", json={"token": expired}).status_code == 401
        forged, _ = issue_token("another-secret-that-is-32-bytes-long", "u-1")
        assert c.post("/verify", json={"token": forged}).status_code == 401
        assert c.post("/verify", json={"token": "garbage"}).status_code == 401
        assert c.get("/healthz").status_code == 200


def test_valid_token_becomes_user_id_and_is_cached_for_its_lifetime(
    start_collector: StartCollector, auth_url: str, settings: Settings, redis_url: str, topic: str
) -> None:
    client = start_collector(auth_url=auth_url)
    token, exp = issue_token(JWT_SECRET, "user-42", ttl_seconds=600)
    calls = verifications("valid")
    sent_at = time.time()  # the cache entry's TTL is counted from a moment after this one
    r = client.post("/v1/events", json=event(token))
    assert r.status_code == 202, r.text
    assert verifications("valid") == calls + 1  # asked the auth service
    ttl = redis.Redis.from_url(redis_url).ttl(cache_key(token))
    assert 590 <= ttl <= exp - sent_at + 1  # cached for the token's lifetime
    r = client.post("/v1/events", json=[event(token), event(token)])
    assert r.status_code == 202 and r.json()["accepted"] == 2
    assert verifications("valid") == calls + 1  # cache hit: the auth service was not asked
    # another replica (empty in-process cache) finds the answer in Redis
    replica = start_collector(auth_url=auth_url)
    redis_hits = cache_hits()
    assert replica.post("/v1/events", json=event(token)).status_code == 202
    assert verifications("valid") == calls + 1
    assert cache_hits() == redis_hits + 1
    records = read_records(settings, topic, 4)
    assert [r.user_id for r in records] == ["user-42"] * 4
    assert all(b"token" not in msg for msg in (str(r).encode() for r in records))


def test_cache_answers_instead_of_the_auth_service(
    start_collector: StartCollector, auth_url: str, settings: Settings, redis_url: str, topic: str
) -> None:
    """What Redis says wins over the token's own claims: the cache is really consulted."""
    client = start_collector(auth_url=auth_url)
    token, exp = issue_token(JWT_SECRET, "claimed-user", ttl_seconds=600)
    redis.Redis.from_url(redis_url).set(cache_key(token), f'["cached-user",{exp}]', ex=60)
    assert client.post("/v1/events", json=event(token)).status_code == 202
    assert read_records(settings, topic, 1)[0].user_id == "cached-user"


def test_invalid_tokens_get_401(
    start_collector: StartCollector, auth_url: str, settings: Settings
) -> None:
    client = start_collector(auth_url=auth_url)
    forged, _ = issue_token("not-our-secret-but-32-bytes-long-too", "mallory")
    expired, _ = issue_token(JWT_SECRET, "late", ttl_seconds=1)
    time.sleep(1.1)
    for bad in (forged, expired, "not-a-jwt"):
        r = client.post("/v1/events", json=event(bad))
        assert r.status_code == 401, r.text
        assert r.json()["field"] == "token"
    # in a batch: a verdict per event; only the bad-token ones are refused
    good, _ = issue_token(JWT_SECRET, "alice")
    r = client.post("/v1/events", json=[event(good), event(forged), event(None)])
    assert r.status_code == 202
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected", "accepted"]
    r = client.post("/v1/events", json=[event(forged)])
    assert r.status_code == 401


def test_auth_service_down_falls_back_to_local_signature_check(
    start_collector: StartCollector, settings: Settings, topic: str
) -> None:
    client = start_collector(auth_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    fresh, _ = issue_token(JWT_SECRET, "bob")
    expired, _ = issue_token(JWT_SECRET, "carol", ttl_seconds=1)
    time.sleep(1.1)
    assert client.post("/v1/events", json=event(fresh)).status_code == 202
    assert client.post("/v1/events", json=event(expired)).status_code == 202  # expiry ignored
    forged, _ = issue_token("not-our-secret-but-32-bytes-long-too", "mallory")
    assert client.post("/v1/events", json=event(forged)).status_code == 401
    assert sorted(r.user_id for r in read_records(settings, topic, 2)) == ["bob", "carol"]
