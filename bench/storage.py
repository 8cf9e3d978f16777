"""Seed 003's storage study (chDB, PostgreSQL, DuckDB; Vertica cannot be installed here).

The same as `clickflow bench storage`; see clickflow/benchmarks/storage.py for the table, the
data distribution, the insert paths and the query settings.

    .venv/bin/python bench/storage.py [--rows 1M,10M] [--runs 5] [--big]
"""

from __future__ import annotations

import sys

from clickflow.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", "storage", *sys.argv[1:]]))
