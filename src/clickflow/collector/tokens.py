"""Token → user_id, as seed 001 says: ask the auth service, cache its answer in Redis for the
token's lifetime, and when the auth service is unreachable check the JWT locally (signature
only, expiry ignored, so an outage of the auth service does not turn users anonymous).

The Redis key is a hash of the token: raw tokens are never stored; the value is
``[user_id, exp]`` (JSON) or ``!`` for a token the auth service refused.

In front of Redis sits a small in-process cache (at most ``LOCAL_TTL`` seconds and never past
the token's expiry): a user sends many events with one token, and a Redis round trip per
request doubled the collector's CPU per event. After the auth service failed, it is not asked
again for ``SERVICE_RETRY_SECONDS`` (local checks meanwhile), so an outage costs no timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import httpx
import jwt
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clickflow.collector.metrics import TOKEN_CHECKS

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
KEY_PREFIX = "clickflow:token:"
_INVALID = b"!"  # cached "the auth service said this token is invalid"
LOCAL_TTL = 30.0
LOCAL_MAX_ENTRIES = 50_000
SERVICE_RETRY_SECONDS = 5.0


def cache_key(token: str) -> str:
    return KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def local_user_id(token: str, secret: str, verify_exp: bool) -> str | None:
    """The ``sub`` of an HS256 JWT signed with ``secret``; None when it is not one."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"verify_exp": verify_exp, "require": ["sub"]},
        )
    except jwt.InvalidTokenError:
        return None
    sub = claims.get("sub")
    return str(sub) if sub else None


class TokenVerifier:
    def __init__(
        self,
        auth_url: str | None,
        jwt_secret: str,
        redis: aioredis.Redis | None,
        http: httpx.AsyncClient,
        invalid_ttl: int = 60,
    ) -> None:
        self._verify_url = f"{auth_url.rstrip('/')}/verify" if auth_url else None
        self._secret = jwt_secret
        self._redis = redis
        self._http = http
        self._invalid_ttl = invalid_ttl
        self._local_cache: dict[str, tuple[str | None, float]] = {}  # token: (user, until)
        self._service_retry_at = 0.0

    async def user_ids(self, tokens: set[str]) -> dict[str, str | None]:
        """user_id per token; None for an invalid token."""
        found: dict[str, str | None] = {}
        now = time.monotonic()
        missing = []
        for token in tokens:
            hit = self._local_cache.get(token)
            if hit is not None and hit[1] > now:
                found[token] = hit[0]
            else:
                missing.append(token)
        if not missing:
            return found
        cached = await self._cache_get(missing)
        if cached:
            for token, value in zip(missing, cached, strict=True):
                if value is None:
                    continue
                if value == _INVALID:
                    found[token] = None
                    self._remember(token, None, self._invalid_ttl)
                    TOKEN_CHECKS.labels("cache", "invalid").inc()
                    continue
                try:
                    user_id, exp = msgspec.json.decode(value, type=tuple[str, int])
                except msgspec.DecodeError:  # not ours: ask again
                    continue
                found[token] = user_id
                self._remember(token, user_id, exp - time.time())
                TOKEN_CHECKS.labels("cache", "valid").inc()
            missing = [t for t in missing if t not in found]
        if missing:
            answers = await asyncio.gather(*(self._verify(t) for t in missing))
            found.update(zip(missing, answers, strict=True))
        return found

    def _remember(self, token: str, user_id: str | None, ttl: float) -> None:
        ttl = min(ttl, LOCAL_TTL)
        if ttl <= 0:
            return
        if len(self._local_cache) >= LOCAL_MAX_ENTRIES:  # drop the oldest tenth
            for old in list(self._local_cache)[: LOCAL_MAX_ENTRIES // 10]:
                del self._local_cache[old]
        self._local_cache[token] = (user_id, time.monotonic() + ttl)

    async def _verify(self, token: str) -> str | None:
        if self._verify_url is None:  # no auth service configured: a full local check
            return self._local(token, verify_exp=True)
        if time.monotonic() < self._service_retry_at:  # it failed a moment ago
            return self._local(token, verify_exp=False)
        try:
            r = await self._http.post(self._verify_url, json={"token": token})
        except httpx.HTTPError as e:
            log.warning("auth service unreachable (%s): local checks for a while", e)
            self._service_retry_at = time.monotonic() + SERVICE_RETRY_SECONDS
            return self._local(token, verify_exp=False)
        if r.status_code == 200:
            try:
                body = r.json()
                user_id, exp = str(body["user_id"]), int(body["exp"])
            except (ValueError, KeyError, TypeError) as e:
                log.warning("auth service answered 200 without user_id/exp (%s): local check", e)
                return self._local(token, verify_exp=False)
            TOKEN_CHECKS.labels("service", "valid").inc()
            ttl = exp - int(time.time())
            await self._cache_set(token, msgspec.json.encode((user_id, exp)), ttl)
            self._remember(token, user_id, ttl)
            return user_id
        if r.status_code in (400, 401, 403, 422):
            TOKEN_CHECKS.labels("service", "invalid").inc()
            await self._cache_set(token, _INVALID, self._invalid_ttl)
            self._remember(token, None, self._invalid_ttl)
            return None
        log.warning("auth service answered %s: local checks for a while", r.status_code)
        self._service_retry_at = time.monotonic() + SERVICE_RETRY_SECONDS
        return self._local(token, verify_exp=False)

    def _local(self, token: str, verify_exp: bool) -> str | None:
        user_id = local_user_id(token, self._secret, verify_exp)
        TOKEN_CHECKS.labels("local", "invalid" if user_id is None else "valid").inc()
        return user_id

    async def _cache_get(self, tokens: list[str]) -> list[bytes | None] | None:
        if self._redis is None:
            return None
        try:
            return await self._redis.mget([cache_key(t) for t in tokens])
        except (RedisError, OSError) as e:
            log.warning("token cache unreachable: %s", e)
            return None

    async def _cache_set(self, token: str, value: bytes, ttl: int) -> None:
        if self._redis is None or ttl <= 0:
            return
        try:
            await self._redis.set(cache_key(token), value, ex=ttl)
        except (RedisError, OSError) as e:
            log.warning("token cache unreachable: %s", e)
