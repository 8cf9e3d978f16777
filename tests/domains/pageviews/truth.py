"""Expected rollups computed independently from the generator's ground truth."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from clickflow.generator.truth import read_truth


def expected_rollups(truth_path: Path) -> tuple[dict, dict, int, int]:
    """Returns (per (minute, page), per (hour, page), valid unique events, broken events)."""
    lines = read_truth(truth_path)
    minute: dict = defaultdict(lambda: {"views": 0, "ms": 0, "users": set(), "bounces": 0})
    hour: dict = defaultdict(lambda: {"views": 0, "ms": 0, "users": set(), "bounces": 0})
    seen: set[str] = set()
    broken = 0
    for line in lines:
        if line["broken"]:
            broken += 1
            continue
        if line["id"] in seen:
            continue
        seen.add(line["id"])
        t = line["truth"]
        for table, key in (
            (minute, (t["minute"], t["page"])),
            (hour, (t["minute"] // 3600 * 3600, t["page"])),
        ):
            agg = table[key]
            agg["views"] += 1
            agg["ms"] += t["ms"]
            agg["users"].add(t["user"])
            agg["bounces"] += int(t["bounce"])
    return minute, hour, len(seen), broken


def as_comparable(table: dict) -> dict:
    return {key: (v["views"], v["ms"], len(v["users"]), v["bounces"]) for key, v in table.items()}


ROLLUP_SQL = (
    "SELECT toUnixTimestamp(window_start) AS w, page_id, sumMerge(view_count) AS v, "
    "sumMerge(total_duration) AS ms, uniqExactMerge(unique_users) AS u, "
    "sumMerge(bounce_count) AS b FROM {table} GROUP BY w, page_id"
)


def rows_to_comparable(rows) -> dict:
    return {(int(w), p): (int(v), int(ms), int(u), int(b)) for w, p, v, ms, u, b in rows}
