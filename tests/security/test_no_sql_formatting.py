"""No SQL is built by formatting values into strings: every value goes as a parameter.

Two checks: ruff's S608 (string-built SQL) over src/, which must be clean except where a
reviewed ``# noqa: S608`` says the interpolated parts are fixed whitelists; and an AST check
that no f-string handed to a query method interpolates anything but a constant-like name,
a whitelist lookup or a placeholder.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "clickflow"
QUERY_METHODS = {"query", "command", "execute", "executemany", "raw_query", "query_df"}


def test_ruff_finds_no_string_built_sql() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "S608",
            "--output-format",
            "concise",
            str(SRC),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _allowed(node: ast.expr) -> bool:
    """Interpolations allowed in SQL f-strings: UPPER_CASE constants, literal lookups in
    constant tables (TABLES[granularity] where the key is validated), and nothing else."""
    if isinstance(node, ast.Name):
        return node.id.isupper() or node.id.startswith("_") and node.id[1:].isupper()
    if isinstance(node, ast.Attribute):
        return node.attr.isupper()
    if isinstance(node, ast.Subscript):
        return _allowed(node.value)
    if isinstance(node, ast.Constant):
        return True
    return False


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in QUERY_METHODS or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.JoinedStr):
            bad = [
                v
                for v in first.values
                if isinstance(v, ast.FormattedValue) and not _allowed(v.value)
            ]
            line = lines[node.lineno - 1]
            span = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if bad and "noqa: S608" not in span:
                found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {line.strip()}")
        if isinstance(first, ast.BinOp) and isinstance(first.op, ast.Mod):
            found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: %-formatted SQL")
    return found


def test_no_fstring_interpolates_values_into_queries() -> None:
    violations = [v for p in sorted(SRC.rglob("*.py")) for v in _violations(p)]
    assert violations == [], "\n".join(violations)


def test_the_check_catches_an_injectable_query(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(client, user):\n    client.query(f\"SELECT * FROM t WHERE u = '{user}'\")\n"
    )
    assert _violations_outside(bad)


def _violations_outside(path: Path) -> list[str]:
    global SRC
    saved = SRC
    SRC = path.parent / "x"
    try:
        return _violations(path)
    finally:
        SRC = saved
