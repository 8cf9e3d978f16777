"""Page-view identity claims in the embedded Redis: one hash per event day, first writer
wins, a replay keeps its own claim."""

from __future__ import annotations

import uuid

from clickflow.config import Settings
from clickflow.exactly_once.claims import DayBucketClaims
from clickflow.stores.redis import redis_client


def test_day_bucket_claims_drop_real_duplicates_and_keep_replays(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    prefix = f"test:{uuid.uuid4().hex}:"
    claims = DayBucketClaims(settings, prefix, ttl_s=3600)
    first = [
        (20000, "a", "t/0/1"),
        (20001, "b", "t/0/2"),
        (20000, "a", "t/1/7"),  # a re-sent copy in the same batch, on another partition
        (20000, "c", "t/0/3"),
    ]
    assert claims.duplicates(first) == {2}
    # A replay of the same records (same owners) keeps them all, the copy stays a duplicate.
    assert claims.duplicates(first) == {2}
    # A later copy of "b" from another record is a duplicate; a new identity is not.
    assert claims.duplicates([(20001, "b", "t/3/9"), (20001, "d", "t/3/10")]) == {0}
    # Same identity on another day is another event (identities hash their timestamp).
    assert claims.duplicates([(20002, "a", "t/0/50")]) == set()
    r = redis_client(settings)
    assert r.hgetall(f"{prefix}20000") == {b"a": b"t/0/1", b"c": b"t/0/3"}
    assert 0 < r.ttl(f"{prefix}20001") <= 3600
    assert claims.duplicates([]) == set()
