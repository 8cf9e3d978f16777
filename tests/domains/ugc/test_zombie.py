"""A zombie consumer writes a chunk again after the partition's new owner wrote it and went
on (it stalled after recording its intent, the group gave its partitions away, then it woke
up and finished the write): its inserts carry the chunk's token and are dropped, so its
pairing update must not claim rows that only its own, later, plan computed. Real Redis and
chDB; the chunks are cut by hand, as the intent log replays them."""

from __future__ import annotations

import uuid

import pytest

from clickflow.config import Settings
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.kafka.batch import Batch, Chunk
from clickflow.migrations import migrate_clickhouse

from .support import BASE_TS, Msg, half, page_views, record, ugc_config

CLICK = {"element_type": "trailer", "page_type": "movie"}
WAIT_S = 3600
H = 3_600_000


def chunk(topic: str, first: int, values: list[tuple[bytes, int]]) -> Chunk:
    msgs = [Msg(topic, 0, first + i, v, ts) for i, (v, ts) in enumerate(values)]
    return Chunk(topic, 0, first, first + len(values) - 1, msgs)  # type: ignore[arg-type]


@pytest.fixture
def rsettings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(s, ["ugc"])
    return s


def test_a_zombie_rewriting_a_chunk_after_its_new_owner_loses_no_page_view(
    rsettings: Settings,
) -> None:
    """Chunk X spans more than the wait: alice's start reached Kafka at T, a click at
    T + wait + 1 min (a quiet partition), and bob's page view is paired inside it. The owner
    stores alice's start (its deadline already passed by X's clock: the next chunk or a
    sweep emits it). A zombie then writes X again: its plan finds alice's start due by X's
    clock and emits it, but under X's token, which the owner used for bob's row: the insert
    is dropped. Its Redis update must not mark alice's start as emitted, or no one stores it."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    cfg = ugc_config(topic, page_view_max_wait_seconds=WAIT_S)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    t = BASE_TS
    x = chunk(
        topic,
        0,
        [
            (half("start", "alice", alice, t), t),
            (half("start", "bob", bob, t + H + 30_000), t + H + 30_000),
            (half("end", "bob", bob, t + H + 40_000), t + H + 40_000),
            (record("element_click", "carol", CLICK, t + H + 60_000), t + H + 60_000),
        ],
    )
    y = chunk(topic, 4, [(record("element_click", "carol", CLICK, t + H + 90_000), t + H + 90_000)])
    owner = UgcHandler(rsettings, cfg, background_sweep=False)
    zombie = UgcHandler(rsettings, cfg, background_sweep=False)
    try:
        assert owner.handle(Batch("g", [x])) == []
        assert zombie.handle(Batch("g", [x])) == []  # woke up: writes X again
        assert owner.handle(Batch("g", [y])) == []
        bob_row = ("bob", bob, "movie", t + H + 30_000, t + H + 40_000, 10.0, 1)
        alice_row = ("alice", alice, "movie", t, None, None, 0)
        assert page_views(rsettings) == sorted([alice_row, bob_row])
    finally:
        owner.close()
        zombie.close()
