"""Rate limiting per client IP: a token bucket kept in Redis, updated by one Lua script.

The script reads the clock from Redis (``TIME``), so every collector replica shares one bucket
per IP and one clock. Requests that arrive while a script call is in flight are decided
together by the next call (one round trip for many requests, many IPs), so the limiter's cost
does not grow with the request rate. The buckets of one call are several keys, so a Redis
Cluster would need them in one slot; this targets a single Redis.

When Redis is unreachable the limiter lets requests through (logged): losing rate limiting for
a while beats refusing every event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS[i]: the bucket of one IP; ARGV[1] rate/s, ARGV[2] burst, ARGV[2+i] requests for KEYS[i].
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


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_ms: int = 0


ALLOW = Decision(True)


class RateLimiter:
    """``rate`` tokens per second refill a bucket of ``burst``; a request takes one."""

    def __init__(
        self, redis: aioredis.Redis, rate: float, burst: int, prefix: str = "clickflow:rl:"
    ) -> None:
        self._script = redis.register_script(TOKEN_BUCKET_LUA)
        self._rate = rate
        self._burst = burst
        self._prefix = prefix
        self._queue: list[tuple[str, asyncio.Future[Decision]]] = []
        self._draining = False
        self._warned = False

    async def take(self, client: str) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.append((client, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._decide(batch)
        finally:
            self._draining = False
            for _, future in self._queue:  # only after an unexpected error
                _settle(future, ALLOW)
            self._queue = []

    async def _decide(self, batch: list[tuple[str, asyncio.Future[Decision]]]) -> None:
        by_client: dict[str, list[asyncio.Future[Decision]]] = {}
        for client, future in batch:
            by_client.setdefault(client, []).append(future)
        try:
            flat = await self._script(
                keys=[self._prefix + c for c in by_client],
                args=[self._rate, self._burst, *(len(f) for f in by_client.values())],
            )
            self._warned = False
        except (RedisError, OSError) as e:
            if not self._warned:
                log.warning("rate limiter: Redis unreachable, letting requests through: %s", e)
                self._warned = True
            flat = [x for fs in by_client.values() for x in (len(fs), 0)]
        except BaseException:
            for _, future in batch:
                _settle(future, ALLOW)
            raise
        for i, futures in enumerate(by_client.values()):
            allowed, retry_ms = int(flat[2 * i]), int(flat[2 * i + 1])
            refused = Decision(False, retry_ms)
            for j, future in enumerate(futures):
                _settle(future, ALLOW if j < allowed else refused)


def _settle(future: asyncio.Future[Decision], decision: Decision) -> None:
    if not future.done():  # the request may be gone (client disconnected)
        future.set_result(decision)
