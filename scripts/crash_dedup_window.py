"""Reproducer: SIGKILL chDB mid-insert, replay with the same tokens, check exact counts.

A child process inserts numbered batches of page views into the page-view schema (raw
table, minute and hour rollups through the materialized views), each with the
deduplication token ``b<N>``, and records after each insert that it returned. The parent
kills it at random moments; each restart replays from the last acknowledged batch minus
one (the in-doubt batch and one acknowledged batch) with the same tokens, as the
exactly-once consumer does. At the end every table must hold every batch exactly once.

    python scripts/crash_dedup_window.py DIR [--kills 80] [--batches 5000] [--packed]
                                             [--no-repair]

``--packed`` stores small parts as one file (``min_bytes_for_full_part_storage``), which
widens the window. ``--no-repair`` skips what clickflow does before it opens a chDB data
directory (``clickflow.exactly_once.chdb_dedup``), and shows the hole. See docs/design.md
("The engine dying between a block's dedup record and its part").
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROWS = 700
SCHEMA = Path(__file__).parents[1] / "src/clickflow/domains/pageviews/schema.sql"
TABLES = ("page_views_raw", "page_views_agg_minute", "page_views_agg_hour")


def batch_rows(n: int) -> str:
    rows = []
    for j in range(ROWS):
        k = n * ROWS + j
        rows.append(
            orjson.dumps(
                {
                    "event_time": f"2026-11-24 10:{(k // 5000) % 60:02d}:00.000",
                    "page_id": f"p{k % 23}",
                    "user_id": f"u{k % 997}",
                    "duration_ms": k % 5000,
                    "ip_address": "::1",
                    "region": "eu",
                    "is_bounce": k % 3 == 0,
                    "event_id": str(k),
                    "kafka_offset": k,
                    "kafka_partition": 0,
                }
            ).decode()
        )
    return "\n".join(rows)


def child(data: Path, batches: int, packed: bool, repair: bool) -> None:
    from chdb import session

    from clickflow.exactly_once.chdb_dedup import forget_uncommitted_blocks
    from clickflow.stores.clickhouse import split_statements

    if repair:  # what clickflow does before it opens a chDB data directory
        for block in forget_uncommitted_blocks(data):
            print(f"forgot {block.part} in {block.table_dir.name}", file=sys.stderr, flush=True)
    s = session.Session(str(data))
    s.query("CREATE DATABASE IF NOT EXISTS t")
    s.query("USE t")
    for statement in split_statements(SCHEMA.read_text()):
        s.query(statement)
    if packed:
        for table in TABLES:
            s.query(f"ALTER TABLE {table} MODIFY SETTING min_bytes_for_full_part_storage = 10e6")
    acked = data / "acked"
    start = int(acked.read_text()) if acked.exists() else 0
    for n in range(max(0, start - 1), batches):
        s.query(
            "INSERT INTO page_views_raw (event_time, page_id, user_id, duration_ms, ip_address,"
            " region, is_bounce, event_id, kafka_offset, kafka_partition)"
            f" SETTINGS insert_deduplication_token = 'b{n}',"
            " deduplicate_blocks_in_dependent_materialized_views = 1"
            f" FORMAT JSONEachRow\n{batch_rows(n)}"
        )
        (data / "acked.tmp").write_text(str(n + 1))
        os.replace(data / "acked.tmp", acked)


def counts(data: Path) -> list[int]:
    from chdb import session

    s = session.Session(str(data))
    q = [
        "SELECT count() FROM t.page_views_raw",
        "SELECT sumMerge(view_count) FROM t.page_views_agg_minute",
        "SELECT sumMerge(view_count) FROM t.page_views_agg_hour",
    ]
    return [int(s.query(sql, "CSV").bytes()) for sql in q]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--kills", type=int, default=80)
    ap.add_argument("--batches", type=int, default=5000)
    ap.add_argument("--packed", action="store_true")
    ap.add_argument("--no-repair", action="store_true", help="skip forget_uncommitted_blocks")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.data, args.batches, args.packed, not args.no_repair)
        return
    shutil.rmtree(args.data, ignore_errors=True)
    args.data.mkdir(parents=True)
    cmd = [sys.executable, __file__, str(args.data), "--child", "--batches", str(args.batches)]
    cmd += ["--packed"] if args.packed else []
    cmd += ["--no-repair"] if args.no_repair else []
    rng = random.Random()
    for _ in range(args.kills):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.8, 3.0))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        print("".join(ln + "\n" for ln in err.splitlines() if ln.startswith("forgot")), end="")
    subprocess.run(cmd, check=True)
    expected = args.batches * ROWS
    got = counts(args.data)
    ok = all(n == expected for n in got)
    print(f"kills={args.kills} packed={args.packed} repair={not args.no_repair}", end=" ")
    print(f"expected={expected:,} raw/minute/hour={got}")
    print("OK" if ok else "MISMATCH: a replayed batch was dropped as a duplicate")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
