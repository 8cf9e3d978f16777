"""The Redis cache of aggregate answers.

Every answer is cached under a key that contains the aggregates' *version*: a counter the
aggregator bumps in PostgreSQL, in the same transaction that changes the aggregates, and
then publishes to Redis (a "set if greater", so two aggregators never move it back). A new
version makes every older cached answer unreachable at once; they expire by TTL. If Redis
missed a publish (it was down right after a commit) the TTL bounds the staleness, and the
next batch publishes again. Keys are prefixed per database, so two deployments (or two
test databases) sharing one Redis never read each other's answers.
"""

from __future__ import annotations

import hashlib
import logging

import redis

from clickflow.logs import log_fields

log = logging.getLogger("clickflow.telecom")

_SET_IF_GREATER = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""


def cache_prefix(postgres_url: str) -> str:
    return "telecom:" + hashlib.sha1(postgres_url.encode()).hexdigest()[:10]


class AggCache:
    def __init__(self, client: redis.Redis, postgres_url: str, ttl_s: int = 300) -> None:
        self._r = client
        self._prefix = cache_prefix(postgres_url)
        self.version_key = f"{self._prefix}:agg:version"
        self._ttl = ttl_s
        self._set_if_greater = client.register_script(_SET_IF_GREATER)

    def publish_version(self, version: int) -> None:
        self._set_if_greater(keys=[self.version_key], args=[version])

    def version(self) -> int | None:
        raw = self._r.get(self.version_key)
        return int(raw) if raw is not None else None

    def key(self, version: int, query: str) -> str:
        return f"{self._prefix}:agg:v{version}:{query}"

    def get(self, key: str) -> bytes | None:
        return self._r.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._r.set(key, value, ex=self._ttl)


def publish_quietly(cache: AggCache | None, version: int | None) -> bool:
    """Publish after the commit; a Redis failure must not fail (and re-run) the batch."""
    if cache is None or version is None:
        return True
    try:
        cache.publish_version(version)
        return True
    except redis.RedisError as e:
        log.warning("cache version publish failed", extra=log_fields(error=str(e)[:200]))
        return False
