"""Page-view settings: one typed object read from CLICKFLOW_PAGEVIEWS_*, checked up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clickflow.domains.pageviews.config import PageViewsConfig
from clickflow.kafka.batch import BatchTrigger, Delivery


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("TOPIC", "BATCH_MODE", "BATCH_RECORDS", "BATCH_SECONDS", "DELIVERY")
    for name in (*names, "SPARSE_RECORDS", "SPARSE_SECONDS"):
        monkeypatch.delenv(f"CLICKFLOW_PAGEVIEWS_{name}", raising=False)
    config = PageViewsConfig()
    assert config.topic == "page_views" and config.delivery is Delivery.EXACTLY_ONCE
    # Under 200 views a second a batch waits up to 3 s for more (sparse traffic).
    assert config.trigger() == BatchTrigger(
        max_records=100_000, max_seconds=1.0, sparse_records=200, sparse_seconds=3.0
    )


def test_environment_sets_the_trigger_and_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKFLOW_PAGEVIEWS_BATCH_MODE", "time")
    monkeypatch.setenv("CLICKFLOW_PAGEVIEWS_BATCH_SECONDS", "2.5")
    monkeypatch.setenv("CLICKFLOW_PAGEVIEWS_DELIVERY", "at-least-once")
    config = PageViewsConfig()
    assert config.trigger() == BatchTrigger(max_records=None, max_seconds=2.5)
    assert config.delivery is Delivery.AT_LEAST_ONCE


@pytest.mark.parametrize(
    ("name", "value"),
    [("BATCH_MODE", "sometimes"), ("BATCH_RECORDS", "0"), ("DELIVERY", "twice"), ("TOPIC", "")],
)
def test_a_bad_value_is_refused_with_its_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"CLICKFLOW_PAGEVIEWS_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        PageViewsConfig()
