"""The ground-truth file: one JSON line per acknowledged record (identity, duplicate or
broken, partition, offset, the factory's truth), read back by tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import orjson


def read_truth(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def truth_part(truth_path: Path, index: int) -> Path:
    """Worker ``index``'s part of a pool's file (concatenated in worker order at the end)."""
    return truth_path.with_name(f"{truth_path.name}.part-{index}")
