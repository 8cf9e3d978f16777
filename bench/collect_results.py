"""Collect bench/results/*.md (figure | goal | value | machine | date) into bench/RESULTS.md,
with the seed's storage figures beside ours. `clickflow bench pipeline` runs this last.

    .venv/bin/python bench/collect_results.py
"""

from __future__ import annotations

from pathlib import Path

from clickflow.benchmarks.collect import write

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    n = write(here / "results", here / "RESULTS.md")
    print(f"{n} figures collected into {here / 'RESULTS.md'}")
