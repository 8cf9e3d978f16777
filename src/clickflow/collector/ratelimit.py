"""Rate limiting per client IP: the shared Redis token bucket (``clickflow.ratelimit``).

Requests that arrive while a script call is in flight are decided together by the next call
(one round trip for many requests, many IPs), so the limiter's cost does not grow with the
request rate.

When Redis is unreachable the limiter lets requests through (logged): losing rate limiting for
a while beats refusing every event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clickflow.ratelimit import TOKEN_BUCKET_LUA, TokenBuckets

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_ms: int = 0


ALLOW = Decision(True)


class RateLimiter:
    """``rate`` tokens per second refill a bucket of ``burst``; a request takes one."""

    def __init__(
        self, redis: aioredis.Redis, rate: float, burst: int, namespace: str = "clickflow:rl:ip:"
    ) -> None:
        self._script = redis.register_script(TOKEN_BUCKET_LUA)
        self._buckets = TokenBuckets(namespace, rate, burst)
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
            keys, args = self._buckets.call((c, len(fs)) for c, fs in by_client.items())
            decisions = self._buckets.decisions(await self._script(keys=keys, args=args))
            self._warned = False
        except (RedisError, OSError) as e:
            if not self._warned:
                log.warning("rate limiter: Redis unreachable, letting requests through: %s", e)
                self._warned = True
            decisions = [(len(fs), 0) for fs in by_client.values()]
        except BaseException:
            for _, future in batch:
                _settle(future, ALLOW)
            raise
        for futures, (allowed, retry_ms) in zip(by_client.values(), decisions, strict=True):
            refused = Decision(False, retry_ms)
            for j, future in enumerate(futures):
                _settle(future, ALLOW if j < allowed else refused)


def _settle(future: asyncio.Future[Decision], decision: Decision) -> None:
    if not future.done():  # the request may be gone (client disconnected)
        future.set_result(decision)
