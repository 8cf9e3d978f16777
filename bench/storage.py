"""The storage study of seed 003, reproduced: ClickHouse (chDB), PostgreSQL and DuckDB.

The seed compared ClickHouse and Vertica on one table and one query:

    CREATE TABLE events (event_time TIMESTAMP, user_id INT, event_type VARCHAR(20), value FLOAT)
    SELECT event_type, count(), avg(value) FROM events GROUP BY event_type   -- 8 threads

10,000,000 rows: ClickHouse 46.64 s insert / 0.27 s query, Vertica 100.43 s / 0.73 s.

Here every store gets the same rows, generated once per size with numpy (fixed seed):
event_time uniform over 30 days (second resolution), user_id uniform in 1..100,000,
event_type uniform over 10 names, value uniform in [0, 1000). Rows go in blocks of up to
1,000,000 through each store's Python client in its fastest idiomatic bulk path:
clickhouse-connect Arrow (columnar) insert, psycopg ``COPY ... FROM STDIN (FORMAT csv)``
fed by Arrow's CSV writer, DuckDB ``INSERT ... SELECT`` from a registered Arrow table.
Insert time is the sum of the client calls (client-side encoding included, data generation
not). The query runs once untimed (warm-up), then ``runs`` times; we report the median.

The DDL is the seed's text (plus ``ENGINE = MergeTree ORDER BY event_time`` for ClickHouse),
so each engine maps FLOAT its own way: Float32 in ClickHouse and DuckDB, double precision in
PostgreSQL (and in Vertica). PostgreSQL has no ``count()`` without an argument: it runs
``count(*)``. "8 threads" is ClickHouse ``max_threads=8``, DuckDB ``threads=8``, PostgreSQL
``max_parallel_workers_per_gather=8`` with the table's ``parallel_workers=8``; this machine
has only 2 cores, so 8 threads share 2.

    .venv/bin/python bench/storage.py [--rows 1M,10M] [--runs 5] [--stores chdb,postgres,duckdb]
        [--big] [--results DIR]

The figures go to bench/results/storage.json and storage.md (or ``--results``), which
bench/collect_results.py puts beside the seed's in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine_with_load, today  # noqa: E402

DDL = "CREATE TABLE events (event_time TIMESTAMP, user_id INT, event_type VARCHAR(20), value FLOAT)"
QUERY = "SELECT event_type, count(), avg(value) FROM events GROUP BY event_type"
THREADS = 8

# Seed 003: 10,000,000 rows, official docker images, mean times.
SEED_ROWS = 10_000_000
SEED = {"ClickHouse": (46.64, 0.27), "Vertica": (100.43, 0.73)}
VERTICA_NOTE = (
    "Vertica: not run. Its server cannot be installed here: the vendor ships it as a Docker "
    "image or an RPM/DEB, this machine has no Docker daemon, and neither pip nor apt has the "
    "server (vertica-python is only a client). The seed's Vertica figures are shown for "
    "reference."
)

EVENT_TYPES = [
    "element_click",
    "page_view_start",
    "page_view_end",
    "quality_change",
    "video_complete",
    "search_filter",
    "play",
    "pause",
    "like",
    "share",
]
USERS = 100_000
DAYS = 30
START = 1_790_812_800  # 2026-10-01 00:00:00 UTC
BLOCK_ROWS = 1_000_000
SEED_RNG = 3
CACHE_LIMIT = 20_000_000  # keep generated blocks in memory up to this many rows


def parse_rows(text: str) -> list[int]:
    """``"1M,10M"`` -> ``[1_000_000, 10_000_000]`` (k, M, G suffixes; plain integers too)."""
    out = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(part[-1:].lower(), 1)
        out.append(int(float(part[:-1] if mult > 1 else part) * mult))
    return out


def human(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


# --------------------------------------------------------------------------- data


def columns(index: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Block ``index`` of the data set (event_time, user_id, event type code, value): the same
    rows for every store and every run."""
    rng = np.random.default_rng([SEED_RNG, index])
    times = START + rng.integers(0, DAYS * 86_400, rows, dtype=np.int64)
    users = rng.integers(1, USERS + 1, rows, dtype=np.int32)
    codes = rng.integers(0, len(EVENT_TYPES), rows, dtype=np.int32)
    return times, users, codes, rng.random(rows) * 1000.0


def to_arrow(times: np.ndarray, users: np.ndarray, codes: np.ndarray, values: np.ndarray):
    types = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(EVENT_TYPES))
    return pa.table(
        {
            "event_time": pa.array(times, pa.timestamp("s")),
            "user_id": pa.array(users),
            "event_type": types.cast(pa.string()),
            "value": pa.array(values),
        }
    )


def block(index: int, rows: int) -> pa.Table:
    return to_arrow(*columns(index, rows))


class DataSet:
    """``rows`` rows in blocks; kept in memory up to CACHE_LIMIT rows, else regenerated."""

    def __init__(self, rows: int, block_rows: int = BLOCK_ROWS) -> None:
        self.rows = rows
        self.sizes = [min(block_rows, rows - i) for i in range(0, rows, block_rows)]
        self._cache: list[pa.Table] | None = [] if rows <= CACHE_LIMIT else None
        self.truth: dict[str, tuple[int, float]] = {}

    def generate(self, advance: Callable[[int], None] = lambda n: None) -> None:
        """Build the blocks once and the expected query answer from them."""
        counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
        sums = np.zeros(len(EVENT_TYPES))
        for i, n in enumerate(self.sizes):
            cols = columns(i, n)
            _t, _u, codes, values = cols
            counts += np.bincount(codes, minlength=len(EVENT_TYPES))
            sums += np.bincount(codes, weights=values, minlength=len(EVENT_TYPES))
            if self._cache is not None:
                self._cache.append(to_arrow(*cols))
            advance(n)
        self.truth = {t: (int(c), s / c) for t, c, s in zip(EVENT_TYPES, counts, sums, strict=True)}

    def blocks(self) -> Iterator[pa.Table]:
        if self._cache is not None:
            yield from self._cache
        else:
            for i, n in enumerate(self.sizes):
                yield block(i, n)


# --------------------------------------------------------------------------- stores


class Store(Protocol):
    name: str
    detail: str

    def create(self) -> None: ...
    def insert(self, table: pa.Table) -> None: ...
    def after_insert(self) -> None: ...
    def query(self) -> list[tuple]: ...
    def close(self) -> None: ...


class ChdbStore:
    name = "ClickHouse (chDB)"

    def __init__(self, dsn: str, database: str) -> None:
        from clickflow.config import Settings
        from clickflow.stores.clickhouse import clickhouse_client

        self.client = clickhouse_client(
            Settings(clickhouse_dsn=dsn, clickhouse_database=database), database
        )
        version = self.client.command("SELECT version()")
        self.detail = f"chDB, ClickHouse {version}, clickhouse-connect insert_arrow, max_threads=8"

    def create(self) -> None:
        self.client.command("DROP TABLE IF EXISTS events")
        self.client.command(f"{DDL} ENGINE = MergeTree ORDER BY event_time")

    def insert(self, table: pa.Table) -> None:
        self.client.insert_arrow("events", table)

    def after_insert(self) -> None:
        pass

    def query(self) -> list[tuple]:
        return self.client.query(QUERY, settings={"max_threads": THREADS}).result_rows

    def close(self) -> None:
        self.client.command("DROP TABLE IF EXISTS events")


class PostgresStore:
    name = "PostgreSQL"

    def __init__(self, url: str, schema: str = "clickflow_bench") -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.schema = schema
        version = self.conn.execute("SHOW server_version").fetchone()[0]
        self.detail = (
            f"PostgreSQL {version}, psycopg COPY csv, max_parallel_workers_per_gather=8, "
            "count(*) for count()"
        )

    def create(self) -> None:
        from psycopg import sql

        c = self.conn
        schema = sql.Identifier(self.schema)
        c.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        c.execute(sql.SQL("SET search_path TO {}").format(schema))
        c.execute("DROP TABLE IF EXISTS events")
        c.execute(DDL)
        for name in ("max_parallel_workers_per_gather", "max_parallel_workers"):
            c.execute("SELECT set_config(%s, %s, false)", (name, str(THREADS)))

    def insert(self, table: pa.Table) -> None:
        import pyarrow.csv as pacsv

        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
        with self.conn.cursor() as cur, cur.copy("COPY events FROM STDIN (FORMAT csv)") as copy:
            copy.write(memoryview(buf.getvalue()))

    def after_insert(self) -> None:
        # Untimed: the usual step after a bulk load (statistics, visibility map).
        self.conn.execute("VACUUM ANALYZE events")
        self.conn.execute(f"ALTER TABLE events SET (parallel_workers = {THREADS})")

    def query(self) -> list[tuple]:
        return self.conn.execute(QUERY.replace("count()", "count(*)")).fetchall()

    def close(self) -> None:
        try:
            from psycopg import sql

            self.conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        finally:
            self.conn.close()


class DuckDBStore:
    name = "DuckDB"

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        self.conn = duckdb.connect(str(path))
        self.conn.execute(f"SET threads = {THREADS}")
        self.detail = f"DuckDB {duckdb.__version__}, INSERT from Arrow, threads=8"

    def create(self) -> None:
        self.conn.execute("DROP TABLE IF EXISTS events")
        self.conn.execute(DDL)

    def insert(self, table: pa.Table) -> None:
        self.conn.register("arrow_block", table)
        self.conn.execute("INSERT INTO events SELECT * FROM arrow_block")
        self.conn.unregister("arrow_block")

    def after_insert(self) -> None:
        self.conn.execute("CHECKPOINT")

    def query(self) -> list[tuple]:
        return self.conn.execute(QUERY).fetchall()

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- run


@dataclass
class Result:
    store: str
    detail: str
    rows: int
    insert_s: float
    query_s: float
    query_runs: list[float] = field(default_factory=list)
    correct: bool = True
    error: str = ""
    load_insert: str = ""
    load_query: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.insert_s if self.insert_s else 0.0


def check(answer: list[tuple], truth: dict[str, tuple[int, float]]) -> str:
    """'' when the answer matches numpy's (counts exact, averages to Float32 precision)."""
    got = {str(t): (int(c), float(a)) for t, c, a in answer}
    if set(got) != set(truth):
        return f"event types {sorted(got)} != {sorted(truth)}"
    for t, (count, avg) in truth.items():
        if got[t][0] != count:
            return f"count({t}) = {got[t][0]}, expected {count}"
        if abs(got[t][1] - avg) > 1e-3 * max(1.0, abs(avg)):
            return f"avg({t}) = {got[t][1]}, expected {avg}"
    return ""


@dataclass
class Progress:
    """Callbacks the runner reports to (a rich progress bar in the CLI, nothing in tests)."""

    start: Callable[[str, int], object] = lambda label, total: None
    advance: Callable[[object, int], None] = lambda task, n: None
    log: Callable[[str], None] = lambda line: None


def bench_store(store: Store, data: DataSet, runs: int, progress: Progress) -> Result:
    store.create()
    task = progress.start(f"insert {human(data.rows)} {store.name}", data.rows)
    insert_s = 0.0
    for b in data.blocks():
        t0 = time.perf_counter()
        store.insert(b)
        insert_s += time.perf_counter() - t0
        progress.advance(task, b.num_rows)
    load_insert = load()
    store.after_insert()
    task = progress.start(f"query  {human(data.rows)} {store.name}", runs + 1)
    error = check(store.query(), data.truth)  # warm-up, and the correctness check
    progress.advance(task, 1)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        store.query()
        times.append(time.perf_counter() - t0)
        progress.advance(task, 1)
    result = Result(
        store.name,
        store.detail,
        data.rows,
        insert_s,
        statistics.median(times),
        times,
        correct=not error,
        error=error,
        load_insert=load_insert,
        load_query=load(),
    )
    progress.log(
        f"{store.name:<18} {human(data.rows):>4}: insert {insert_s:7.2f} s "
        f"{result.rows_per_s:>10,.0f} rows/s, query {result.query_s:.3f} s"
        + ("" if result.correct else f"  WRONG ANSWER: {error}")
    )
    return result


STORES = ("chdb", "postgres", "duckdb")


def run(
    sizes: list[int],
    runs: int,
    workdir: Path,
    stores: tuple[str, ...] = STORES,
    clickhouse_dsn: str | None = None,
    clickhouse_database: str = "bench_storage",
    postgres_url: str | None = None,
    progress: Progress | None = None,
) -> list[Result]:
    """Run the study for every size on every store; starts embedded PostgreSQL if needed."""
    progress = progress or Progress()
    pg_proc = None
    if "postgres" in stores and not postgres_url:
        from clickflow.runtime.postgres_server import start_postgres

        pg_proc, postgres_url = start_postgres(workdir / "pg" / "data")
    results: list[Result] = []
    try:
        for rows in sizes:
            data = DataSet(rows)
            task = progress.start(f"generate {human(rows)} rows", rows)
            data.generate(lambda n, task=task: progress.advance(task, n))
            for key in stores:
                store = _open(key, workdir, clickhouse_dsn, clickhouse_database, postgres_url)
                try:
                    results.append(bench_store(store, data, runs, progress))
                finally:
                    store.close()
    finally:
        if pg_proc is not None:
            os.killpg(pg_proc.pid, signal.SIGTERM)
            pg_proc.wait(30)
    return results


def _open(key: str, workdir: Path, dsn: str | None, database: str, pg_url: str | None) -> Store:
    if key == "chdb":
        return ChdbStore(dsn or f"chdb:///{workdir / 'ch'}", database)
    if key == "postgres":
        assert pg_url
        return PostgresStore(pg_url)
    if key == "duckdb":
        path = workdir / "duck.db"
        path.unlink(missing_ok=True)
        return DuckDBStore(path)
    raise ValueError(f"unknown store {key!r}; choose from {', '.join(STORES)}")


def disk_needed(rows: int) -> int:
    """Bytes of scratch space for one size (PostgreSQL's heap dominates: ~60 B/row)."""
    return rows * 100


def scratch_dir() -> Path:
    base = os.environ.get("CLICKFLOW_BENCH_DIR")
    return Path(tempfile.mkdtemp(prefix="clickflow-storage-", dir=base))


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


# --------------------------------------------------------------------------- reporting


def results_markdown(entries: list[dict]) -> str:
    """bench/results/storage.md from storage.json entries: one row per figure, the seed's
    figures in the goal column."""
    lines = ["| figure | goal | value | machine | date |", "|---|---|---|---|---|"]
    seed_insert = "seed 10M rows: ClickHouse 46.64 s, Vertica 100.43 s"
    seed_query = "seed 10M rows: ClickHouse 0.27 s, Vertica 0.73 s"
    for r in entries:
        mark = "" if r["correct"] else " (WRONG ANSWER)"
        lines.append(
            f"| storage insert, {r['rows']:,} rows, {r['store']} | {seed_insert} "
            f"| {r['insert_s']:.2f} s ({r['rows_per_s']:,} rows/s){mark} "
            f"| {r['machine']}, {r['load_insert']} | {r['date']} |"
        )
        lines.append(
            f"| storage query GROUP BY event_type, 8 threads, {r['rows']:,} rows, {r['store']} "
            f"| {seed_query} | {r['query_s']:.3f} s (median of {r['runs']}){mark} "
            f"| {r['machine']}, {r['load_query']} | {r['date']} |"
        )
    return "\n".join(lines) + "\n"


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier figures of other sizes/stores stay; a store and size run again is replaced."""
    key = lambda r: (r["rows"], r["store"])  # noqa: E731
    fresh = {key(r) for r in new}
    return sorted([r for r in old if key(r) not in fresh] + new, key=key)


def results_json(results: list[Result], runs: int) -> list[dict]:
    return [
        {
            "store": r.store,
            "detail": r.detail,
            "rows": r.rows,
            "insert_s": round(r.insert_s, 3),
            "rows_per_s": round(r.rows_per_s),
            "query_s": round(r.query_s, 4),
            "query_runs": [round(t, 4) for t in r.query_runs],
            "runs": runs,
            "correct": r.correct,
            "machine": machine_with_load().rsplit(", load ", 1)[0],
            "load_insert": r.load_insert,
            "load_query": r.load_query,
            "date": today(),
        }
        for r in results
    ]


# --------------------------------------------------------------------------- command line

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Seed 003's storage study on chDB (ClickHouse), PostgreSQL and DuckDB; 1 when a store
    gave a wrong answer."""
    from rich.console import Console

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--rows", default="1M,10M", help="sizes, e.g. 1M,10M (100M needs --big)")
    ap.add_argument("--runs", type=int, default=5, help="query runs per store (median reported)")
    ap.add_argument(
        "--stores", default="chdb,postgres,duckdb", help="subset of " + ",".join(STORES)
    )
    ap.add_argument("--big", action="store_true", help="allow sizes above 20M rows")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="results folder")
    args = ap.parse_args(argv)

    console = Console()
    sizes = parse_rows(args.rows)
    keys = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    if bad := set(keys) - set(STORES):
        ap.error(f"unknown stores {sorted(bad)}; choose from {STORES}")
    # Embedded PostgreSQL runs in its own session: on SIGTERM (run_all.py's time limit)
    # unwind through the finally blocks that stop it.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = scratch_dir()
    old_tmp = os.environ.get("TMPDIR")
    if "chdb" in keys:
        os.environ["TMPDIR"] = str(work)  # chDB writes insert data to $TMPDIR
    for n in list(sizes):
        if n > CACHE_LIMIT and not args.big:
            console.print(f"[yellow]skipping {n:,} rows: pass --big to run sizes above 20M")
            sizes.remove(n)
        elif disk_needed(n) > free_bytes(work):
            console.print(f"[yellow]skipping {n:,} rows: not enough free disk in {work}")
            sizes.remove(n)
    console.print(
        f"storage study: {', '.join(f'{n:,}' for n in sizes)} rows; "
        f"{', '.join(keys)}; 8 query threads on {os.cpu_count()} cores; {load()}"
    )
    console.print(f"[dim]{VERTICA_NOTE}")
    pg_url = os.environ.get("CLICKFLOW_POSTGRES_URL") or None
    try:
        res = _run_with_progress(console, sizes, args.runs, keys, work, pg_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
        signal.signal(signal.SIGTERM, previous)
    console.print(_table(res, args.runs))
    _write(args.results, res, args.runs)
    console.print(f"figures written to {args.results / 'storage.md'}")
    return 0 if all(r.correct for r in res) else 1


def _run_with_progress(console, sizes, runs, keys, work, pg_url):
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        hooks = Progress(
            start=lambda label, total: bar.add_task(label, total=total),
            advance=lambda task, n: bar.advance(task, n),
            log=bar.console.print,
        )
        return run(sizes, runs, work, keys, postgres_url=pg_url, progress=hooks)


def _table(res, runs):
    from rich.table import Table

    t = Table(title="events(event_time, user_id, event_type, value): insert and GROUP BY")
    for col in ("store", "rows", "insert s", "rows/s", f"query s (median of {runs})", "load"):
        t.add_column(col, justify="left" if col in ("store", "load") else "right")
    for name, (ins, q) in SEED.items():
        t.add_row(
            f"{name} (seed 003)",
            f"{SEED_ROWS:,}",
            f"{ins:.2f}",
            f"{SEED_ROWS / ins:,.0f}",
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


def _write(folder: Path, res, runs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "storage.json"
    old = json.loads(path.read_text()) if path.exists() else []
    entries = merge(old, results_json(res, runs))
    path.write_text(json.dumps(entries, indent=1) + "\n")
    (folder / "storage.md").write_text(results_markdown(entries))


if __name__ == "__main__":
    sys.exit(main())
