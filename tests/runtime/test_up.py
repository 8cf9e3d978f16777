"""`clickflow up` end to end: healthy services, a busy port fails fast, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.processes import kill_tree, spawn, stop_tree

from .up_env import up_env


@pytest.mark.slow
def test_up_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    env, ports = up_env(tmp_path)
    children: list[psutil.Process] = []
    log = tmp_path / "up.log"  # a file, not a pipe nobody reads while `up` runs
    up = spawn(
        [sys.executable, "-m", "clickflow", "up", "--demo"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        # Generous: on a busy 2-core machine the stack can take minutes to come up.
        deadline = time.monotonic() + 240
        healthy: set[str] = set()
        while healthy != {"api", "collector"}:
            assert time.monotonic() < deadline, "services not healthy within 240 s"
            assert up.poll() is None, log.read_text()[-3000:]
            for name in ("api", "collector"):
                try:
                    r = httpx.get(f"http://127.0.0.1:{ports[name]}/healthz", timeout=2)
                    if r.status_code == 200:
                        healthy.add(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        # Each pipeline process serves its own health and metrics, on the ports listed.
        for port in (ports["process"], ports["process"] + 1):
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"process on {port} not healthy"
                time.sleep(0.5)
            assert r.json()["service"] == "process"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "clickflow_pipeline_up{" in metrics
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 5

        # A second `up` on the same ports fails fast and names the busy port.
        second = subprocess.run(
            [sys.executable, "-m", "clickflow", "up"],
            env=env,
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert second.returncode != 0
        err = second.stderr.decode()
        assert f"port {ports['kafka']}" in err and "busy" in err, err
        assert "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("clickflow: port"), err
    finally:
        up.send_signal(signal.SIGINT)  # to `up` alone: stopping its services is its job
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            stop_tree(up, signal.SIGKILL)
            raise
    # `up` has returned; give the exit of its last service a moment to be visible.
    _, alive = psutil.wait_procs(children, timeout=5)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    try:
        assert alive == [], f"left behind: {[p.cmdline()[:3] for p in alive]}"
    finally:
        kill_tree(alive)
