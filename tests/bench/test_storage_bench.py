"""The storage study on real stores at 20k rows, and the results collector."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

# bench/ is on sys.path (tests/bench/conftest.py): the scripts themselves are under test.
import collect_results as collect
import numpy as np
import pytest
import run_all
import storage as st

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROWS = 20_000
# DuckDB comes with the bench extra (`make bench`); `make test` installs only dev.
HAS_DUCKDB = importlib.util.find_spec("duckdb") is not None
STORES = ("chdb", "postgres", "duckdb") if HAS_DUCKDB else ("chdb", "postgres")


def test_data_follows_the_documented_distribution() -> None:
    times, users, codes, values = st.columns(0, 50_000)
    assert times.min() >= st.START and times.max() < st.START + 30 * 86_400
    assert times.max() - times.min() > 29 * 86_400  # spread over the 30 days
    assert users.min() >= 1 and users.max() <= 100_000 and len(np.unique(users)) > 35_000
    assert sorted(np.unique(codes)) == list(range(10))
    assert 0 <= values.min() and values.max() < 1000 and abs(values.mean() - 500) < 10
    # The same block twice: every store gets identical rows.
    again = st.columns(0, 50_000)
    expected = (times, users, codes, values)
    assert all(np.array_equal(a, b) for a, b in zip(again, expected, strict=True))


def test_storage_bench_on_chdb_postgres_duckdb(
    tmp_path: Path, clickhouse_dsn: str, ch_database: str, postgres_url: str
) -> None:
    results = st.run(
        [ROWS],
        runs=2,
        workdir=tmp_path,
        stores=STORES,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=ch_database,
        postgres_url=postgres_url,
    )
    names = ["ClickHouse (chDB)", "PostgreSQL", "DuckDB"][: len(STORES)]
    assert [r.store for r in results] == names
    for r in results:
        # Each store's GROUP BY answer was compared with numpy's over the generated rows.
        assert r.correct, f"{r.store}: {r.error}"
        assert r.rows == ROWS and r.insert_s > 0 and len(r.query_runs) == 2
    # The truth itself, computed independently of the data set's own bookkeeping.
    _t, _u, codes, values = st.columns(0, ROWS)
    data = st.DataSet(ROWS)
    data.generate()
    for i, name in enumerate(st.EVENT_TYPES):
        assert data.truth[name][0] == int((codes == i).sum())
        assert data.truth[name][1] == pytest.approx(values[codes == i].mean())

    # The collector puts our rows beside the seed's.
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    entries = st.merge([], st.results_json(results, 2))
    (results_dir / "storage.md").write_text(st.results_markdown(entries))
    (results_dir / "storage.json").write_text(json.dumps(entries))
    text = collect.render(results_dir)
    assert "| ClickHouse (seed 003) | 10M | 46.64 s |" in text
    assert "| Vertica (seed 003) | 10M | 100.43 s |" in text
    for r in st.results_json(results, 2):
        assert f"| {r['store']} | 20k | {r['insert_s']:.2f} s | {r['rows_per_s']:,} |" in text
    assert "Vertica: not run" in text


def test_check_rejects_a_wrong_answer() -> None:
    truth = {"a": (3, 2.0), "b": (1, 5.0)}
    assert st.check([("a", 3, 2.0), ("b", 1, 5.0)], truth) == ""
    assert "count(a)" in st.check([("a", 4, 2.0), ("b", 1, 5.0)], truth)
    assert "avg(b)" in st.check([("a", 3, 2.0), ("b", 1, 5.1)], truth)
    assert "event types" in st.check([("a", 3, 2.0)], truth)


def test_collector_keeps_every_figure_and_skips_other_tables(tmp_path: Path) -> None:
    (tmp_path / "alpha.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        "| a1 | >= 1 | 2 ev/s | m1 | 2026-01-01 |\n"
        "| a2 | < 2 s | 1.5 s | m1 | 2026-01-01 |\n"
        "\nsome text\n\n| other | table |\n|---|---|\n| x | y |\n"
    )
    (tmp_path / "beta.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        "| b1 | - | 7 | m2 | 2026-01-02 |\n"
    )
    target = tmp_path / "RESULTS.md"
    n = collect.write(tmp_path, target, notes=["beta.py: ok in 3 s"])
    assert n == 3
    text = target.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| alpha") or ln.startswith("| beta")]
    assert rows == [
        "| alpha | a1 | >= 1 | 2 ev/s | m1 | 2026-01-01 |",
        "| alpha | a2 | < 2 s | 1.5 s | m1 | 2026-01-01 |",
        "| beta | b1 | - | 7 | m2 | 2026-01-02 |",
    ]
    assert "- beta.py: ok in 3 s" in text
    assert "no storage run recorded" in text


@pytest.mark.skipif(not HAS_DUCKDB, reason="duckdb is in the bench extra")
def test_cli_storage_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(BENCH / "storage.py"), "--rows", "20k", "--runs", "1", "--stores",
         "duckdb", "--results", str(out)],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "Vertica" in output and "DuckDB" in output
    md = (out / "storage.md").read_text()
    assert "storage insert, 20,000 rows, DuckDB" in md
    assert json.loads((out / "storage.json").read_text())[0]["correct"] is True


def test_merge_keeps_other_sizes_and_replaces_reruns() -> None:
    old = [{"rows": 10, "store": "A", "v": 1}, {"rows": 20, "store": "A", "v": 1}]
    new = [{"rows": 20, "store": "A", "v": 2}, {"rows": 20, "store": "B", "v": 2}]
    assert st.merge(old, new) == [
        {"rows": 10, "store": "A", "v": 1},
        {"rows": 20, "store": "A", "v": 2},
        {"rows": 20, "store": "B", "v": 2},
    ]


@pytest.mark.skipif(not HAS_DUCKDB, reason="duckdb is in the bench extra")
def test_pipeline_runs_scripts_with_limits_and_collects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = tmp_path / "bench"
    (bench / "results").mkdir(parents=True)
    (bench / "ok.py").write_text(
        "import sys, pathlib\n"
        "assert sys.argv[1:] == ['--small'], sys.argv\n"
        "(pathlib.Path(__file__).parent / 'results' / 'ok.md').write_text(\n"
        "    '| figure | goal | value | machine | date |\\n|---|---|---|---|---|\\n'\n"
        "    '| ok figure | >= 1 | 5 ev/s | m | 2026-01-01 |\\n')\n"
    )
    (bench / "slow.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(
        run_all,
        "PIPELINE_SCRIPTS",
        {"ok.py": (["--small"], 60), "slow.py": ([], 2), "gone.py": ([], 60)},
    )
    monkeypatch.setattr(
        run_all, "STORAGE_ARGS", ["--rows", "20k", "--runs", "1", "--stores", "duckdb"]
    )
    assert run_all.main(["--bench-dir", str(bench)]) == 0
    text = (bench / "RESULTS.md").read_text()
    assert "| ok | ok figure | >= 1 | 5 ev/s | m | 2026-01-01 |" in text
    assert "| DuckDB | 20k |" in text  # the storage study ran and was collected
    assert "- ok.py --small: ok in" in text
    assert "- slow.py: timed out after 2 s" in text
    assert "- gone.py: skipped, not in this checkout" in text
    assert "- peers_quix.py: skipped, not in this checkout" in text
