"""A chunk's dead letters are queryable before its stored records (pure logic: the inserts
are recorded, not made)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from clickflow.config import Settings
from clickflow.domains.pageviews import pipeline
from clickflow.domains.pageviews.pipeline import PageViewHandler


def done(value: object) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def test_error_rows_are_inserted_before_the_chunks_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that waits for a later record of the chunk (a canary) and then looks for the
    # dead letters of the records before it must find them.
    tables: list[str] = []
    monkeypatch.setattr(pipeline, "clickhouse_client", lambda _settings: object())
    monkeypatch.setattr(
        pipeline, "insert_chunk", lambda _client, table, *_a, **_k: tables.append(table)
    )
    handler = PageViewHandler.__new__(PageViewHandler)
    handler.settings = Settings()
    handler._insert(done(None), "g:t:0:0-2", [done([b"[1]"])], [b'{"error_reason":"x"}'])
    assert tables == ["processing_errors", "page_views_raw"]
