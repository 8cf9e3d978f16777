"""A crash between a block's deduplication record and its part: the replay still lands.

Each step runs in its own process, as after a real crash (chDB: one process per data
directory). The first step inserts one chunk with its token; the test then deletes one
table's part, which is what a SIGKILL between ClickHouse's dedup record and the part's
rename leaves on disk (the temporary part is removed at start-up); the second step replays
the chunk with the same token, and every table must hold it exactly once.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from clickflow.exactly_once.chdb_dedup import PART_NAME, forget_uncommitted_blocks

ROWS = 120
START = int(time.time()) // 3600 * 3600  # this hour: inside every table's TTL
STEP = """
import sys

import orjson
from clickflow.config import get_settings
from clickflow.domains.pageviews.pipeline import RAW_COLUMNS
from clickflow.migrations import migrate_clickhouse
from clickflow.exactly_once.insert import PIPELINE_INSERT_SETTINGS
from clickflow.stores.clickhouse import clickhouse_client

n, start = int(sys.argv[1]), int(sys.argv[2])
settings = get_settings()
migrate_clickhouse(settings, ["pageviews"])
rows = [
    orjson.dumps([start + i, f"/p{i % 3}", f"u{i % 7}", 1000, "ua", "::1", "eu", 0,
                  f"id{i}", i, 0])
    for i in range(n)
]
client = clickhouse_client(settings)
client.raw_insert(
    "page_views_raw", RAW_COLUMNS, b"\\n".join(rows), fmt="JSONCompactEachRow",
    settings={"insert_deduplication_token": f"g:pv:0:0-{n - 1}", **PIPELINE_INSERT_SETTINGS},
)
counts = {
    t: int(client.command(f"SELECT {e} FROM {t}"))
    for t, e in (
        ("page_views_raw", "count()"),
        ("page_views_agg_minute", "sumMerge(view_count)"),
        ("page_views_agg_hour", "sumMerge(view_count)"),
    )
}
print(orjson.dumps(counts).decode())
"""


def _step(data: Path) -> dict[str, int]:
    env = {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(data),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{data / 'clickhouse'}",
        "CLICKFLOW_CLICKHOUSE_DATABASE": "repair",
    }
    args = [sys.executable, "-c", STEP, str(ROWS), str(START)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return orjson.loads(out.stdout.splitlines()[-1])


def _table_dir(data: Path, table: str) -> Path:
    store = data / "clickhouse" / "store"
    for meta in store.glob(f"*/*/{table}.sql"):
        uuid = re.search(r"UUID '([0-9a-f-]+)'", meta.read_text())
        if uuid:
            return store / uuid[1][:3] / uuid[1]
    raise AssertionError(f"no data directory for {table}")


@pytest.mark.parametrize(
    "lost", [None, "page_views_raw", "page_views_agg_minute", "page_views_agg_hour"]
)
def test_replay_lands_when_a_crash_left_a_record_without_its_part(
    tmp_path: Path, lost: str | None
) -> None:
    data = tmp_path / "data"
    whole = dict.fromkeys(("page_views_raw", "page_views_agg_minute", "page_views_agg_hour"), ROWS)
    assert _step(data) == whole
    if lost is not None:
        parts = [p for p in _table_dir(data, lost).iterdir() if PART_NAME.fullmatch(p.name)]
        assert parts, f"{lost} has no part to lose"
        for part in parts:
            shutil.rmtree(part)
    # The replay: a record whose part is gone is forgotten, a true one still deduplicates.
    assert _step(data) == whole


# -- the repair's rules on a fake data directory (pure file logic) -----------------------------


def _fake_table(data: Path, parts: list[str], log: str) -> Path:
    table = data / "store" / "abc" / "abc-uuid"
    (table / "deduplication_logs").mkdir(parents=True)
    for part in parts:
        (table / part).mkdir()
    (table / "deduplication_logs" / "deduplication_log_1.txt").write_text(log)
    return table / "deduplication_logs" / "deduplication_log_1.txt"


def test_only_a_last_record_without_its_part_is_forgotten(tmp_path: Path) -> None:
    log = "1\t202611_1_1_0\tid-1\n1\t202611_2_2_0\tid-2\n"
    # Block 2 merged into 1_2: committed, nothing to forget.
    kept = _fake_table(tmp_path / "a", ["202611_1_2_1", "tmp_merge_202611_1_9_2"], log)
    assert forget_uncommitted_blocks(tmp_path / "a") == []
    assert kept.read_text() == log
    # Block 2 has no part (a temporary one does not count): its record gets a DROP.
    lost = _fake_table(tmp_path / "b", ["202611_1_1_0", "tmp_insert_202611_2_2_0"], log)
    [block] = forget_uncommitted_blocks(tmp_path / "b")
    assert (block.part, block.block_id) == ("202611_2_2_0", "id-2")
    assert lost.read_text() == log + "2\t202611_2_2_0\tid-2\n"
    # Once forgotten, the last record is the DROP: a second start-up changes nothing.
    assert forget_uncommitted_blocks(tmp_path / "b") == []


def test_nothing_is_touched_while_another_process_has_the_directory(tmp_path: Path) -> None:
    log = "1\t202611_7_7_0\tid-7\n"
    path = _fake_table(tmp_path, [], log)
    with (tmp_path / "status").open("wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as chDB holds it while the directory is open
        assert forget_uncommitted_blocks(tmp_path) == []
    assert path.read_text() == log
    assert [b.part for b in forget_uncommitted_blocks(tmp_path)] == ["202611_7_7_0"]
