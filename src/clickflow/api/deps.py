"""Dependencies shared by the domain routers: settings, store clients, token auth."""

from __future__ import annotations

import hmac
from typing import Annotated

from clickhouse_connect.driver.client import Client
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clickflow.config import Settings
from clickflow.stores.clickhouse import clickhouse_client

_bearer = HTTPBearer(auto_error=False)


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(settings_dep)]


def clickhouse_dep(settings: SettingsDep) -> Client:
    """A ClickHouse client for the calling thread (sync routes run in a thread pool)."""
    return clickhouse_client(settings)


ClickHouseDep = Annotated[Client, Depends(clickhouse_dep)]


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When CLICKFLOW_API_TOKEN is set, every query route needs ``Authorization: Bearer``."""
    expected = settings.api_token
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"field": "Authorization", "reason": "missing or invalid bearer token"},
            headers={"WWW-Authenticate": "Bearer"},
        )
