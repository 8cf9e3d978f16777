"""The collector's side of the browser tracker, over HTTP: the script and the demo page it
serves, and CORS (preflight, the fast ingest path, credentials, nothing when unset)."""

from __future__ import annotations

import gzip
import re

import pytest

from clickflow.collector.config import CollectorConfig
from tests.collector.conftest import StartCollector

SITE = "http://cinema.example"
EVENT = {"event": "element_click", "data": {"element_type": "movie", "page_type": "main"}}


def test_options_read_comma_separated_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKFLOW_COLLECTOR_CORS_ORIGINS", " http://a.example/ ,http://b:81,")
    assert CollectorConfig().cors_origins == ["http://a.example", "http://b:81"]
    monkeypatch.delenv("CLICKFLOW_COLLECTOR_CORS_ORIGINS")
    options = CollectorConfig()
    assert options.cors_origins == [] and options.cors_allow_credentials is False


def test_tracker_script_is_served_small(start_collector: StartCollector) -> None:
    client = start_collector()
    r = client.get("/js/clickflow.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "max-age" in r.headers["cache-control"]
    assert len(gzip.compress(r.content, 9)) <= 3 * 1024, "the tracker must stay <= 3 KB gzipped"
    assert b"sendBeacon" in r.content and b"/v1/events" in r.content


def test_demo_page_uses_the_tracker(start_collector: StartCollector) -> None:
    client = start_collector()
    for path in ("/demo", "/demo/movie"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = r.text
        assert '<script src="/js/clickflow.js"' in page
        assert len(re.findall(r"data-cf-click=", page)) >= 3
        assert "<video" in page and "data-cf-search" in page
        assert 'name="cf-page-type"' in page
        assert "http://" not in page and "https://" not in page  # nothing from the network


def test_preflight_and_post_from_an_allowed_origin(start_collector: StartCollector) -> None:
    client = start_collector({"cors_origins": [SITE, "http://other.example"]})
    pre = client.options(
        "/v1/events",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == SITE
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "content-type" in pre.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in pre.headers
    assert int(pre.headers["access-control-max-age"]) > 0

    r = client.post("/v1/events", json=EVENT, headers={"Origin": SITE})
    assert r.status_code == 202, r.text
    assert r.headers["access-control-allow-origin"] == SITE
    assert "origin" in r.headers["vary"].lower()
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    # Errors carry the headers too, or the page could not read why it was refused.
    bad = client.post("/v1/events", json={"event": "nope", "data": {}}, headers={"Origin": SITE})
    assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == SITE


def test_other_origins_get_no_cors_headers(start_collector: StartCollector) -> None:
    client = start_collector({"cors_origins": [SITE]})
    evil = "http://evil.example"
    pre = client.options(
        "/v1/events", headers={"Origin": evil, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 400
    assert "access-control-allow-origin" not in pre.headers
    r = client.post("/v1/events", json=EVENT, headers={"Origin": evil})
    assert r.status_code == 202  # CORS is the browser's check; the event itself is fine
    assert "access-control-allow-origin" not in r.headers
    # A look-alike of an allowed origin is another origin.
    r = client.post("/v1/events", json=EVENT, headers={"Origin": SITE + ".evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_no_cors_unless_configured(start_collector: StartCollector) -> None:
    client = start_collector()
    r = client.post("/v1/events", json=EVENT, headers={"Origin": SITE})
    assert r.status_code == 202
    assert not [h for h in r.headers if h.startswith("access-control-")]
    pre = client.options(
        "/v1/events", headers={"Origin": SITE, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers


def test_any_origin_and_credentials(start_collector: StartCollector) -> None:
    anyone = start_collector({"cors_origins": ["*"]})
    r = anyone.post("/v1/events", json=EVENT, headers={"Origin": SITE})
    assert r.headers["access-control-allow-origin"] == "*"
    creds = start_collector({"cors_origins": [SITE], "cors_allow_credentials": True})
    r = creds.post("/v1/events", json=EVENT, headers={"Origin": SITE})
    assert r.headers["access-control-allow-origin"] == SITE
    assert r.headers["access-control-allow-credentials"] == "true"
