"""Rate limiting per client IP: a token bucket kept in Redis, updated by one Lua script.

The script reads the clock from Redis (``TIME``), so every collector replica shares one bucket
per IP and one clock. When Redis is unreachable the limiter lets requests through (logged):
losing rate limiting for a while beats refusing every event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

TOKEN_BUCKET_LUA = """
redis.replicate_commands()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local retry_ms = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_ms = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry_ms}
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
        self._warned = False

    async def take(self, client: str, cost: int = 1) -> Decision:
        try:
            allowed, retry_ms = await self._script(
                keys=[self._prefix + client], args=[self._rate, self._burst, cost]
            )
        except (RedisError, OSError) as e:
            if not self._warned:
                log.warning("rate limiter: Redis unreachable, letting requests through: %s", e)
                self._warned = True
            return ALLOW
        self._warned = False
        return ALLOW if allowed else Decision(False, int(retry_ms))
