"""Every bench in one run, with reduced sizes and time limits, then bench/RESULTS.md: the
front door of `make bench`.

Runs the storage study (storage.py) and the peer comparison (peers_quix.py) first, then every
other bench/*.py with the flags below, each in its own process group and killed at its time
limit; stops starting scripts when the budget is used up. What ran, how long it took and what
was skipped or timed out goes into the notes at the end of RESULTS.md.

    .venv/bin/python bench/run_all.py [--quick] [--budget-minutes 19]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import collect_results  # noqa: E402
from _common import load  # noqa: E402

HERE = Path(__file__).resolve().parent

# The bench/ scripts: the flags that keep `make bench` under 20 minutes on a 2-core machine
# (read from each script's argparse) and a time limit in seconds. Any other
# bench/*.py found runs with its defaults and DEFAULT_LIMIT; a listed one that is missing is
# noted as skipped.
PIPELINE_SCRIPTS: dict[str, tuple[list[str], int]] = {
    "consumer_throughput.py": (["--records", "500000"], 120),
    "generator_throughput.py": (["--seconds", "5"], 90),
    "pageviews_pipeline.py": (["--events", "200000", "--fresh-seconds", "15"], 180),
    "collector_load.py": (["--duration", "3"], 150),
    "ugc_pipeline.py": (["--events", "200000"], 150),
    "adclicks.py": (["--clicks", "200000", "--requests", "100"], 180),
    "telecom.py": (["--events", "100000", "--verify-events", "20000", "--requests", "500"], 180),
    "dashboard_cost.py": (["--seconds", "15"], 120),
    "sql_endpoint.py": (["--history", "30000", "--queries", "200"], 180),
    # A smoke run: one round is no A/B; the figure needs --trials 5 or more on a quiet machine.
    "observability_off_cost.py": (
        ["--trials", "1", "--events", "200000", "--variants", "off,none"],
        180,
    ),
}
DEFAULT_LIMIT = 120
# Not scripts of their own: shared helpers, and the parts this runner starts itself.
NOT_SCRIPTS = {"_common.py", "storage.py", "collect_results.py", "peers_quix.py", "run_all.py"}
STORAGE_ARGS = ["--rows", "1M,10M", "--runs", "5"]
STORAGE_LIMIT = 420
PEERS_ARGS = ["--events", "1000000"]
PEERS_LIMIT = 420


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="storage at 1M only and 200k peer events (a smoke run)"
    )
    ap.add_argument(
        "--budget-minutes", type=float, default=19.0, help="stop starting scripts after this"
    )
    ap.add_argument(
        "--bench-dir", type=Path, default=HERE, help="the folder of scripts and results/"
    )
    args = ap.parse_args(argv)
    folder: Path = args.bench_dir
    budget = args.budget_minutes
    started = time.monotonic()
    notes: list[str] = []
    storage_args = ["--rows", "1M", "--runs", "3"] if args.quick else STORAGE_ARGS
    peers_args = ["--events", "200000"] if args.quick else PEERS_ARGS
    names = list(PIPELINE_SCRIPTS) + sorted(
        p.name for p in folder.glob("*.py") if p.name not in NOT_SCRIPTS | set(PIPELINE_SCRIPTS)
    )
    jobs: list[tuple[Path, list[str], int]] = [
        (folder / name, *PIPELINE_SCRIPTS.get(name, ([], DEFAULT_LIMIT))) for name in names
    ]
    # The storage study and the peers first, then the others.
    jobs.insert(0, (folder / "peers_quix.py", peers_args, PEERS_LIMIT))
    storage = [*storage_args, "--results", str(folder / "results")]
    jobs.insert(0, (HERE / "storage.py", storage, STORAGE_LIMIT))
    deadline = started + budget * 60
    for script, script_args, limit in jobs:
        label = f"{script.name} {' '.join(script_args)}".strip()
        left = deadline - time.monotonic()
        if left < 30:
            notes.append(f"{script.name}: not run, the {budget:g} min budget was used up")
            print(f"== {script.name}: no time left, skipped", flush=True)
            continue
        limit = int(min(limit, left))
        if not script.exists():
            notes.append(f"{script.name}: skipped, not in this checkout")
            print(f"== {script.name}: missing, skipped", flush=True)
            continue
        print(f"== {label} (limit {limit} s)", flush=True)
        status, seconds = run_limited([sys.executable, str(script), *script_args], limit)
        notes.append(f"{label}: {status} in {seconds:.0f} s, {load()}")
        print(f"== {label}: {status} in {seconds:.0f} s", flush=True)
    total = time.monotonic() - started
    notes.append(f"total {total / 60:.1f} min on {os.cpu_count()} cores")
    results = folder / "results"
    results.mkdir(exist_ok=True)
    (results / collect_results.RUN_NOTES).write_text(json.dumps(notes, indent=1) + "\n")
    n = collect_results.write(results, folder / "RESULTS.md", notes)
    print(f"{n} figures collected into {folder / 'RESULTS.md'} ({total / 60:.1f} min)")
    return 0


def run_limited(cmd: list[str], limit: int) -> tuple[str, float]:
    """Run ``cmd`` in its own process group; at ``limit`` seconds TERM the group (KILL 15 s
    later). Returns the status line and the seconds it took."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = proc.wait(limit)
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        status = f"timed out after {limit} s (killed; its figures are from an earlier run)"
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    return status, time.monotonic() - t0


if __name__ == "__main__":
    sys.exit(main())
