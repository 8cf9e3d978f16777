"""Security basics: every query route (page views, UGC, ad clicks, telecom, pipelines) needs
the bearer token once CLICKFLOW_API_TOKEN is set, and secrets are read from the environment
only (never from the config file, never shown in a repr)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from clickflow.api.app import create_app
from clickflow.config import Settings

TOKEN = "fuzz-api-token-0123456789abcdef"


def _routes(app: FastAPI) -> list[str]:
    paths = []
    for path, ops in app.openapi()["paths"].items():
        if "get" in ops and path != "/healthz":
            paths.append(path.replace("{", "").replace("}", ""))  # {ad_id} -> ad_id: any id
    return paths


def test_every_query_route_requires_the_token_when_set(api_settings: Settings) -> None:
    app = create_app(api_settings.model_copy(update={"api_token": TOKEN}))
    paths = _routes(app)
    for prefix in ("/v1/pageviews/", "/v1/ugc/", "/v1/ads/", "/api/v1/", "/v1/pipelines/"):
        assert any(p.startswith(prefix) for p in paths), prefix
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in paths:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = client.get(path, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers.get("WWW-Authenticate") == "Bearer"
            r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code not in (401, 403) and r.status_code < 500, (path, r.text)


def test_without_a_token_configured_the_routes_are_open(api_settings: Settings) -> None:
    app = create_app(api_settings.model_copy(update={"api_token": None}))
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in _routes(app):
            assert client.get(path).status_code not in (401, 403), path


def test_secrets_come_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "clickflow.toml"
    config.write_text('api_port = 8123\njwt_secret = "from-a-file"\napi_token = "from-a-file"\n')
    monkeypatch.setenv("CLICKFLOW_CONFIG", str(config))
    monkeypatch.delenv("CLICKFLOW_JWT_SECRET", raising=False)
    monkeypatch.delenv("CLICKFLOW_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="environment"):
        Settings()
    config.write_text("api_port = 8123\n")
    monkeypatch.setenv("CLICKFLOW_API_TOKEN", "from-the-env-123")
    monkeypatch.setenv("CLICKFLOW_JWT_SECRET", "jwt-from-the-env-456")
    s = Settings()
    assert (s.api_port, s.api_token, s.jwt_secret) == (
        8123,
        "from-the-env-123",
        "jwt-from-the-env-456",
    )
    assert "from-the-env-123" not in repr(s) and "jwt-from-the-env-456" not in repr(s)
