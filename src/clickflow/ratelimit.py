"""Token buckets in Redis: one Lua script for every rate limiter in clickflow.

``rate`` tokens per second refill a bucket of ``burst``; a request takes one. The script
reads the clock from Redis (``TIME``), so every process of a service shares one bucket per
client and one clock. One call decides any number of requests for any number of clients
(the collector batches the requests that arrive while a call is in flight), so the cost does
not grow with the request rate. The buckets of one call are several keys, so a Redis Cluster
would need them in one slot; this targets a single Redis.

Every limiter has its own key namespace, and a client's text (an IP, a token digest) only
ever reaches Redis as a digest inside a key and never as part of the script: no client can
address another namespace's bucket or change what the script does.

Users: the collector's per-IP limiter (``collector/ratelimit.py``, asyncio) and the telecom
query API's per-client limiter (``domains/telecom/ratelimit.py``, threads, with an
in-process fallback while Redis is down: ``LocalBuckets``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Sequence

# KEYS[i]: one client's bucket; ARGV[1] rate/s, ARGV[2] burst, ARGV[2+i] requests for KEYS[i].
# Returns, per key, how many of its requests are allowed and the ms until the next token.
TOKEN_BUCKET_LUA = """
redis.replicate_commands()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = math.ceil(burst * 1000 / rate) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local wanted = tonumber(ARGV[2 + i])
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1])
  local ts = tonumber(b[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  local allowed = math.min(wanted, math.floor(tokens))
  tokens = tokens - allowed
  local retry_ms = 0
  if allowed < wanted then
    retry_ms = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', key, ttl)
  out[2 * i - 1] = allowed
  out[2 * i] = retry_ms
end
return out
"""


class TokenBuckets:
    """One limiter's buckets: its namespace, rate and burst, and the script's arguments.

    Transport-free: the caller runs ``TOKEN_BUCKET_LUA`` with its own Redis client (sync or
    asyncio) on ``call(...)``'s keys and args, and reads the answer with ``decisions``."""

    def __init__(self, namespace: str, rate: float, burst: int) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive (a disabled limiter has no buckets)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.namespace = namespace
        self.rate = float(rate)
        self.burst = int(burst)

    def key(self, client: str) -> str:
        """``namespace`` + a digest of ``client``: fixed length, the same for the same client,
        whatever characters the client's text holds."""
        digest = hashlib.blake2b(client.encode("utf-8", "surrogatepass"), digest_size=16)
        return self.namespace + digest.hexdigest()

    def call(self, wanted: Iterable[tuple[str, int]]) -> tuple[list[str], list[float | int]]:
        """KEYS and ARGV for requests per client (``wanted``: (client, count) pairs)."""
        keys: list[str] = []
        args: list[float | int] = [self.rate, self.burst]
        for client, count in wanted:
            keys.append(self.key(client))
            args.append(int(count))
        return keys, args

    @staticmethod
    def decisions(flat: Sequence[int | bytes | str]) -> list[tuple[int, int]]:
        """The script's answer as (allowed, retry_after_ms) per client, in call order."""
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


class LocalBuckets:
    """The same buckets kept in this process (for when Redis is absent or failing)."""

    MAX_CLIENTS = 100_000  # forget every idle client beyond this many

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = int(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + max(0.0, now - ts) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > self.MAX_CLIENTS:
                self._buckets.clear()
            return allowed
