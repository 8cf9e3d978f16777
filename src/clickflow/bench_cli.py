"""`clickflow bench ...`: the storage study, the peer comparison, and every bench in one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks: storage study, peers, all bench/ scripts.")

# The bench/ scripts of the other issues: the flags that keep `make bench` under 20 minutes on
# a 2-core machine (read from each script's argparse) and a time limit in seconds. Any other
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
}
DEFAULT_LIMIT = 120
# Not scripts of their own: shared helpers, and the parts `pipeline` runs itself.
NOT_SCRIPTS = {"_common.py", "storage.py", "collect_results.py", "peers_quix.py"}
STORAGE_ARGS = ["--rows", "1M,10M", "--runs", "5"]
STORAGE_LIMIT = 420
PEERS_ARGS = ["--events", "1000000"]
PEERS_LIMIT = 420


def bench_dir() -> Path:
    """bench/ of this checkout: the current directory's, else the one next to src/."""
    here = Path.cwd() / "bench"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "bench"


@bench_app.command()
def storage(
    rows: Annotated[str, typer.Option(help="sizes, e.g. 1M,10M (100M needs --big)")] = "1M,10M",
    runs: Annotated[int, typer.Option(help="query runs per store (median reported)")] = 5,
    stores: Annotated[str, typer.Option(help="subset of chdb,postgres,duckdb")] = (
        "chdb,postgres,duckdb"
    ),
    big: Annotated[bool, typer.Option(help="allow sizes above 20M rows")] = False,
    results: Annotated[
        Path | None, typer.Option(help="results folder (default bench/results when present)")
    ] = None,
) -> None:
    """Seed 003's storage study on chDB (ClickHouse), PostgreSQL and DuckDB."""
    from rich.console import Console

    from clickflow.benchmarks import storage as st

    console = Console()
    sizes = st.parse_rows(rows)
    keys = tuple(s.strip() for s in stores.split(",") if s.strip())
    if bad := set(keys) - set(st.STORES):
        raise typer.BadParameter(f"unknown stores {sorted(bad)}; choose from {st.STORES}")
    # Embedded PostgreSQL runs in its own session: on SIGTERM (the pipeline's time limit)
    # unwind through the finally blocks that stop it.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = st.scratch_dir()
    old_tmp = os.environ.get("TMPDIR")
    if "chdb" in keys:
        os.environ["TMPDIR"] = str(work)  # chDB writes insert data to $TMPDIR
    for n in list(sizes):
        if n > st.CACHE_LIMIT and not big:
            console.print(f"[yellow]skipping {n:,} rows: pass --big to run sizes above 20M")
            sizes.remove(n)
        elif st.disk_needed(n) > st.free_bytes(work):
            console.print(f"[yellow]skipping {n:,} rows: not enough free disk in {work}")
            sizes.remove(n)
    console.print(
        f"storage study: {', '.join(f'{n:,}' for n in sizes)} rows; "
        f"{', '.join(keys)}; 8 query threads on {os.cpu_count()} cores; {st.load()}"
    )
    console.print(f"[dim]{st.VERTICA_NOTE}")
    pg_url = os.environ.get("CLICKFLOW_POSTGRES_URL") or None
    try:
        res = _run_storage(console, sizes, runs, keys, work, pg_url)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
        signal.signal(signal.SIGTERM, previous)
    console.print(_storage_table(res, runs))
    folder = results or (bench_dir() / "results" if bench_dir().is_dir() else None)
    if folder is not None:
        _write_storage(folder, res, runs)
        console.print(f"figures written to {folder / 'storage.md'}")
    if not all(r.correct for r in res):
        raise typer.Exit(1)


def _run_storage(console, sizes, runs, keys, work, pg_url):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from clickflow.benchmarks import storage as st

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        hooks = st.Progress(
            start=lambda label, total: bar.add_task(label, total=total),
            advance=lambda task, n: bar.advance(task, n),
            log=bar.console.print,
        )
        return st.run(sizes, runs, work, keys, postgres_url=pg_url, progress=hooks)


def _storage_table(res, runs):
    from rich.table import Table

    from clickflow.benchmarks import storage as st

    t = Table(title="events(event_time, user_id, event_type, value): insert and GROUP BY")
    for col in ("store", "rows", "insert s", "rows/s", f"query s (median of {runs})", "load"):
        t.add_column(col, justify="left" if col in ("store", "load") else "right")
    for name, (ins, q) in st.SEED.items():
        t.add_row(
            f"{name} (seed 003)",
            f"{st.SEED_ROWS:,}",
            f"{ins:.2f}",
            f"{st.SEED_ROWS / ins:,.0f}",
            f"{q:.2f} (mean)",
            "seed machine",
            style="dim",
        )
    for r in res:
        t.add_row(
            r.store,
            f"{r.rows:,}",
            f"{r.insert_s:.2f}",
            f"{r.rows_per_s:,.0f}",
            f"{r.query_s:.3f}" + ("" if r.correct else " WRONG"),
            r.load_query,
        )
    return t


def _write_storage(folder: Path, res, runs: int) -> None:
    from clickflow.benchmarks import storage as st

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "storage.json"
    old = json.loads(path.read_text()) if path.exists() else []
    entries = st.merge(old, st.results_json(res, runs))
    path.write_text(json.dumps(entries, indent=1) + "\n")
    (folder / "storage.md").write_text(st.results_markdown(entries))


@bench_app.command()
def peers(
    events: Annotated[int, typer.Option(help="page views to aggregate")] = 1_000_000,
) -> None:
    """clickflow's page-view pipeline vs Quix Streams on the same broker and data."""
    script = bench_dir() / "peers_quix.py"
    raise typer.Exit(subprocess.call([sys.executable, str(script), "--events", str(events)]))


@bench_app.command()
def pipeline(
    quick: Annotated[
        bool, typer.Option(help="storage at 1M only and 200k peer events (a smoke run)")
    ] = False,
    budget_minutes: Annotated[
        float, typer.Option(help="stop starting scripts when this is used up")
    ] = 19.0,
) -> None:
    """Run every bench/ script (reduced sizes, time limits), then write bench/RESULTS.md."""
    from clickflow.benchmarks import collect

    folder = bench_dir()
    started = time.monotonic()
    notes: list[str] = []
    storage_args = ["--rows", "1M", "--runs", "3"] if quick else STORAGE_ARGS
    peers_args = ["--events", "200000"] if quick else PEERS_ARGS
    names = list(PIPELINE_SCRIPTS) + sorted(
        p.name for p in folder.glob("*.py") if p.name not in NOT_SCRIPTS | set(PIPELINE_SCRIPTS)
    )
    jobs: list[tuple[Path | None, list[str], int]] = [
        (folder / name, *PIPELINE_SCRIPTS.get(name, ([], DEFAULT_LIMIT))) for name in names
    ]
    # This issue's own figures first: the storage study and the peers, then the others.
    jobs.insert(0, (folder / "peers_quix.py", peers_args, PEERS_LIMIT))
    jobs.insert(0, (None, ["storage", *storage_args], STORAGE_LIMIT))
    deadline = started + budget_minutes * 60
    for script, args, limit in jobs:
        left = deadline - time.monotonic()
        if left < 30:
            name = script.name if script else f"clickflow bench {args[0]}"
            notes.append(f"{name}: not run, the {budget_minutes:g} min budget was used up")
            typer.echo(f"== {name}: no time left, skipped")
            continue
        limit = int(min(limit, left))
        if script is not None and not script.exists():
            notes.append(f"{script.name}: skipped, not in this checkout")
            typer.echo(f"== {script.name}: missing, skipped")
            continue
        if script is None:
            label = f"clickflow bench {' '.join(args)}"
            cmd = [sys.executable, "-m", "clickflow", "bench", *args]
        else:
            label = f"{script.name} {' '.join(args)}".strip()
            cmd = [sys.executable, str(script), *args]
        typer.echo(f"== {label} (limit {limit} s)", err=False)
        status, seconds = _run_limited(cmd, limit)
        notes.append(f"{label}: {status} in {seconds:.0f} s, {_load()}")
        typer.echo(f"== {label}: {status} in {seconds:.0f} s")
    total = time.monotonic() - started
    notes.append(f"total {total / 60:.1f} min on {os.cpu_count()} cores")
    results = folder / "results"
    results.mkdir(exist_ok=True)
    (results / collect.RUN_NOTES).write_text(json.dumps(notes, indent=1) + "\n")
    n = collect.write(results, folder / "RESULTS.md", notes)
    typer.echo(f"{n} figures collected into {folder / 'RESULTS.md'} ({total / 60:.1f} min)")


def _run_limited(cmd: list[str], limit: int) -> tuple[str, float]:
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
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    return status, time.monotonic() - t0


def _load() -> str:
    from clickflow.benchmarks import load

    return load()


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
