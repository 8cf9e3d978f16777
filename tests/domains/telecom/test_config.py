"""Telecom settings: one typed object read from CLICKFLOW_TELECOM_*, checked up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clickflow.domains.telecom.config import TelecomConfig


@pytest.mark.parametrize(
    ("name", "value"),
    [("PARTITIONS", "0"), ("RATE_LIMIT_PER_S", "-1"), ("CACHE_TTL_S", "0"), ("TOPIC", "")],
)
def test_a_bad_value_is_refused_with_its_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"CLICKFLOW_TELECOM_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        TelecomConfig()


def test_zero_rate_still_disables_the_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKFLOW_TELECOM_RATE_LIMIT_PER_S", "0")
    assert TelecomConfig().rate_limit_per_s == 0
