"""Token-bucket rate limiting for the telecom API (HTTP and gRPC alike).

With Redis the bucket is shared by every API process (one Lua script, atomic); without it,
or while Redis fails, each process keeps its own buckets. ``rate_per_s`` = 0 disables it.
"""

from __future__ import annotations

import math
import threading
import time

import redis
from prometheus_client import Counter

REJECTED = Counter(
    "clickflow_telecom_rate_limited", "Requests refused by the rate limiter", ["protocol"]
)

_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local t = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(t[1]) or burst
local ts = tonumber(t[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return allowed
"""


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, client: redis.Redis | None = None) -> None:
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self._redis = client
        self._script = client.register_script(_BUCKET) if client is not None else None
        self._local: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self) -> int:
        return max(1, math.ceil(1 / self.rate)) if self.rate > 0 else 1

    def allow(self, client_id: str) -> bool:
        if not self.enabled:
            return True
        now = time.time()
        if self._script is not None:
            try:
                key = f"telecom:ratelimit:{client_id}"
                return bool(self._script(keys=[key], args=[self.rate, self.burst, now]))
            except redis.RedisError:
                pass  # fall back to this process's buckets
        with self._lock:
            tokens, ts = self._local.get(client_id, (float(self.burst), now))
            tokens = min(self.burst, tokens + max(0.0, now - ts) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._local[client_id] = (tokens, now)
            if len(self._local) > 100_000:  # forget idle clients
                self._local.clear()
            return allowed
