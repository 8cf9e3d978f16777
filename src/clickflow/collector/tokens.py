"""Token → user_id, as seed 001 says: ask the auth service, cache its answer in Redis for the
token's lifetime, and when the auth service is unreachable check the JWT locally (signature
only, expiry ignored, so an outage of the auth service does not turn users anonymous).

The Redis key is a hash of the token: raw tokens are never stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import httpx
import jwt
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clickflow.collector.metrics import TOKEN_CHECKS

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
KEY_PREFIX = "clickflow:token:"
_INVALID = b"!"  # cached "the auth service said this token is invalid"


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

    async def user_ids(self, tokens: set[str]) -> dict[str, str | None]:
        """user_id per token; None for an invalid token."""
        found: dict[str, str | None] = {}
        missing = list(tokens)
        cached = await self._cache_get(missing)
        if cached:
            for token, value in zip(missing, cached, strict=True):
                if value is None:
                    continue
                found[token] = None if value == _INVALID else value.decode()
                TOKEN_CHECKS.labels("cache", "invalid" if value == _INVALID else "valid").inc()
            missing = [t for t in missing if t not in found]
        if missing:
            answers = await asyncio.gather(*(self._verify(t) for t in missing))
            found.update(zip(missing, answers, strict=True))
        return found

    async def _verify(self, token: str) -> str | None:
        if self._verify_url is None:  # no auth service configured: a full local check
            return self._local(token, verify_exp=True)
        try:
            r = await self._http.post(self._verify_url, json={"token": token})
        except httpx.HTTPError as e:
            log.debug("auth service unreachable (%s): local check", e)
            return self._local(token, verify_exp=False)
        if r.status_code == 200:
            try:
                body = r.json()
                user_id, exp = str(body["user_id"]), int(body["exp"])
            except (ValueError, KeyError, TypeError) as e:
                log.warning("auth service answered 200 without user_id/exp (%s): local check", e)
                return self._local(token, verify_exp=False)
            TOKEN_CHECKS.labels("service", "valid").inc()
            await self._cache_set(token, user_id.encode(), exp - int(time.time()))
            return user_id
        if r.status_code in (400, 401, 403, 422):
            TOKEN_CHECKS.labels("service", "invalid").inc()
            await self._cache_set(token, _INVALID, self._invalid_ttl)
            return None
        log.warning("auth service answered %s: local check", r.status_code)
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
