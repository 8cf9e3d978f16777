"""The development auth service (`clickflow auth`, port 8003): issues and verifies JWTs.

A stand-in for the real auth service of seed 001, so `clickflow up` works end to end:
``POST /token {"user_id"}`` issues an HS256 JWT signed with ``CLICKFLOW_JWT_SECRET``;
``POST /verify {"token"}`` answers ``{"user_id", "exp"}`` or 401. The collector calls
``/verify`` and falls back to checking the same signature itself when this is down.
"""

from __future__ import annotations

import time
from typing import Annotated

import jwt
import typer
from fastapi import FastAPI, HTTPException
from prometheus_client import Counter
from pydantic import BaseModel, Field

from clickflow.collector.tokens import JWT_ALGORITHM
from clickflow.config import Settings, get_settings
from clickflow.health import health_router

VERIFICATIONS = Counter(
    "clickflow_auth_verifications_total", "POST /verify answers of the auth service", ["result"]
)


class TokenRequest(BaseModel):
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    ttl_seconds: Annotated[int, Field(gt=0, le=30 * 86400)] = 3600


class TokenIssued(BaseModel):
    token: str
    user_id: str
    exp: int


class VerifyRequest(BaseModel):
    token: str


class TokenInfo(BaseModel):
    user_id: str
    exp: int


def issue_token(secret: str, user_id: str, ttl_seconds: int = 3600) -> tuple[str, int]:
    """A signed JWT for ``user_id`` (claim ``sub``) and its expiry (epoch seconds)."""
    now = int(time.time())
    exp = now + ttl_seconds
    token = jwt.encode({"sub": user_id, "iat": now, "exp": exp}, secret, algorithm=JWT_ALGORITHM)
    return token, exp


def create_auth_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="clickflow dev auth service", version="0.1.0", docs_url="/docs")
    app.include_router(health_router("auth", {}))

    @app.post("/token", response_model=TokenIssued, tags=["auth"], summary="Issue a JWT")
    async def token(req: TokenRequest) -> TokenIssued:
        tok, exp = issue_token(settings.jwt_secret, req.user_id, req.ttl_seconds)
        return TokenIssued(token=tok, user_id=req.user_id, exp=exp)

    @app.post(
        "/verify",
        response_model=TokenInfo,
        tags=["auth"],
        summary="Verify a JWT",
        responses={401: {"description": "Invalid or expired token"}},
    )
    async def verify(req: VerifyRequest) -> TokenInfo:
        try:
            claims = jwt.decode(
                req.token,
                settings.jwt_secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["sub", "exp"]},
            )
        except jwt.InvalidTokenError as e:
            VERIFICATIONS.labels("invalid").inc()
            raise HTTPException(status_code=401, detail=f"invalid token: {e}") from None
        VERIFICATIONS.labels("valid").inc()
        return TokenInfo(user_id=str(claims["sub"]), exp=int(claims["exp"]))

    return app


def register(app: typer.Typer) -> None:
    @app.command()
    def auth() -> None:
        """The development auth service: issues and verifies JWTs on port 8003."""
        from clickflow.logs import setup_logging
        from clickflow.runtime.http_server import run_app

        settings = get_settings()
        setup_logging(settings.log_level)
        run_app(
            create_auth_app(settings),
            host=settings.host,
            port=settings.auth_port,
            log_level="warning",
        )
