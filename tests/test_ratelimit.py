"""The one token bucket, on a real Redis: both limiters use it, each in its own namespace, and
no client text reaches the script or shapes a key."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from clickflow.collector.ratelimit import RateLimiter as CollectorLimiter
from clickflow.domains.telecom import ratelimit as telecom
from clickflow.ratelimit import TOKEN_BUCKET_LUA, TokenBuckets

HOSTILE = [
    "",
    "1.2.3.4",
    "a b\x00c\r\n",
    "clickflow:rl:telecom:x",
    "'); return redis.call('FLUSHALL') --",
    "]] .. redis.call('DEL', KEYS[1]) .. [[",
    "\udcff" + "é" * 3000,
]


def test_keys_stay_in_their_namespace_whatever_the_client_text() -> None:
    buckets = TokenBuckets("clickflow:rl:test:", 10, 5)
    keys = [buckets.key(c) for c in HOSTILE]
    assert len(set(keys)) == len(HOSTILE)  # distinct clients, distinct buckets
    assert all(k.startswith("clickflow:rl:test:") and len(k) == 18 + 32 for k in keys)
    assert buckets.key("1.2.3.4") == TokenBuckets("clickflow:rl:test:", 1, 1).key("1.2.3.4")
    assert all(c not in TOKEN_BUCKET_LUA for c in HOSTILE if c)


def test_invalid_rate_or_burst_is_refused_up_front() -> None:
    with pytest.raises(ValueError):
        TokenBuckets("x:", 0, 5)
    with pytest.raises(ValueError):
        TokenBuckets("x:", 1, 0)


def test_burst_then_refusal_per_client_with_hostile_names(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(TOKEN_BUCKET_LUA)
        buckets = TokenBuckets(f"clickflow:rl:test-{uuid.uuid4().hex}:", 0.01, 3)
        keys, args = buckets.call((c, 5) for c in HOSTILE)
        assert buckets.decisions(script(keys, args)) == [
            (3, pytest.approx(100_000, rel=0.01))
        ] * len(HOSTILE)
        assert client.ping() and all(client.exists(k) for k in keys)  # nothing was flushed
        assert sorted(k.decode() for k in client.keys(buckets.namespace + "*")) == sorted(keys)
    finally:
        client.close()


def test_collector_and_telecom_share_the_script_in_separate_namespaces(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    try:
        who = f"ip:{uuid.uuid4().hex}"
        limiter = telecom.RateLimiter(0.01, 2, sync)
        assert [limiter.allow(who) for _ in range(3)] == [True, True, False]

        async def collector() -> list[bool]:
            client = aioredis.Redis.from_url(redis_url)
            try:
                c = CollectorLimiter(client, 0.01, 2)
                return [d.allowed for d in await asyncio.gather(*(c.take(who) for _ in range(3)))]
            finally:
                await client.aclose()

        # The same client text: the telecom bucket is empty, the collector's is its own.
        assert asyncio.run(collector()) == [True, True, False]
        key = TokenBuckets(telecom.NAMESPACE, 1, 1).key(who)
        assert sync.exists(key) and not sync.exists(telecom.NAMESPACE + who)
    finally:
        sync.close()


def test_telecom_falls_back_to_local_buckets_without_redis() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    limiter = telecom.RateLimiter(0.01, 2, dead)
    assert [limiter.allow("t:abc") for _ in range(3)] == [True, True, False]
    assert telecom.RateLimiter(0, 2, dead).allow("t:abc")  # 0 disables it
