"""The session's process guard: a pytest run that leaves a process behind fails, and the
process (even an orphan in a session of its own) is killed; spawned groups are stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = "from tests.conftest import _stop_started_processes, pytest_configure, pytest_sessionfinish  # noqa: F401\n"  # noqa: E501


def _run_pytest(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _running(token: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if token in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
            out.append(p)
    return out


def test_a_leaked_orphan_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    token = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    # `setsid` and `&`: the sleeper is in its own session and its parent exits at once, as a
    # service of a killed `clickflow up` would be.
    body = (
        "import subprocess\n"
        "def test_leaks():\n"
        f"    subprocess.run(['sh', '-c', 'setsid sleep {token} >/dev/null 2>&1 &'], check=True)\n"
    )
    out = _run_pytest(tmp_path, body)
    try:
        assert out.returncode == 1, out.stdout + out.stderr
        assert "1 passed" in out.stdout
        assert "processes left running by the tests" in out.stdout
        assert f"sleep {token}" in out.stdout
        assert _running(token) == []
    finally:
        for p in _running(token):
            p.kill()


def test_spawned_groups_are_stopped_and_the_run_passes(tmp_path: Path) -> None:
    token = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    body = (
        "from tests.processes import spawn\n"
        "def test_forgets_to_stop():\n"
        f"    spawn(['sh', '-c', 'sleep {token} & wait'])\n"
    )
    out = _run_pytest(tmp_path, body)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "processes left running" not in out.stdout
        assert _running(token) == []
    finally:
        for p in _running(token):
            p.kill()
