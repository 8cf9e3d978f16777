"""The collector learns its event kinds, topic and record from the domains (collect.py)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from msgspec import Struct

from clickflow.collector import app, envelope, ingest, kinds
from clickflow.collector.exceptions import CollectedDomainError
from clickflow.domains import DOMAINS
from clickflow.domains.ugc import events as ugc


def test_the_collector_modules_name_no_domain() -> None:
    for module in (app, envelope, ingest, kinds):
        source = inspect.getsource(module)
        assert [d for d in DOMAINS if f"domains.{d}" in source] == [], module.__name__


def test_ugc_is_the_collected_domain() -> None:
    found = kinds.find_collected(DOMAINS)
    assert found.domain == "ugc" and found.kinds is ugc.EVENT_KINDS
    assert found.topic().name == ugc.UGC_TOPIC
    data = ugc.ElementClick(element_type="movie", page_type="category")
    record = found.record("element_click", "e1", "u1", 1234, data)
    assert record == ugc.UgcRecord("element_click", "e1", "u1", 1234, data)  # type: ignore[arg-type]


def test_none_or_two_collected_domains_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CollectedDomainError, match="found: none"):
        kinds.find_collected(["pageviews", "telecom"])
    twin = SimpleNamespace(KINDS={}, topic=lambda: None, record=lambda *a: None)
    monkeypatch.setattr(kinds, "domain_module", lambda d, _part: twin)
    with pytest.raises(CollectedDomainError, match="found: a, b"):
        kinds.find_collected(["a", "b"])


def test_a_kind_added_to_the_domain_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Trailer(Struct, forbid_unknown_fields=True):
        movie: str

    monkeypatch.setitem(ugc.EVENT_KINDS, "trailer_play", Trailer)
    [event], _ = envelope.parse(b'{"event": "trailer_play", "data": {"movie": "m"}}', 10)
    assert not isinstance(event, envelope.Rejected) and event.kind == "trailer_play"
