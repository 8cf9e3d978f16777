"""Token-bucket rate limiting for the telecom API (HTTP and gRPC alike).

With Redis the buckets are the shared ones of ``clickflow.ratelimit`` (one per client, shared
by every API process); without Redis, or while it fails, each process keeps its own buckets.
``rate_per_s`` = 0 disables it.
"""

from __future__ import annotations

import math

import redis
from prometheus_client import Counter

from clickflow.ratelimit import TOKEN_BUCKET_LUA, LocalBuckets, TokenBuckets

REJECTED = Counter(
    "clickflow_telecom_rate_limited", "Requests refused by the rate limiter", ["protocol"]
)

NAMESPACE = "clickflow:rl:telecom:"


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, client: redis.Redis | None = None) -> None:
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self._buckets = TokenBuckets(NAMESPACE, rate_per_s, self.burst) if self.enabled else None
        self._script = client.register_script(TOKEN_BUCKET_LUA) if client is not None else None
        self._local = LocalBuckets(rate_per_s, self.burst)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self) -> int:
        return max(1, math.ceil(1 / self.rate)) if self.rate > 0 else 1

    def allow(self, client_id: str) -> bool:
        if self._buckets is None:
            return True
        if self._script is not None:
            try:
                keys, args = self._buckets.call([(client_id, 1)])
                [(allowed, _retry_ms)] = self._buckets.decisions(self._script(keys, args))
                return allowed == 1
            except redis.RedisError:
                pass  # fall back to this process's buckets
        return self._local.take(client_id)
