"""The dashboard in headless Chromium against `clickflow up --demo`: live, non-zero,
changing numbers that match the query API; a screenshot is saved under test-output/."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cdp import CHROMIUM, FLAGS
from tests.processes import spawn, stop_tree
from tests.runtime.up_env import up_env

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _chromium(url: str, tmp: Path, *args: str) -> str:
    assert CHROMIUM, "Debian's chromium is required (make test installs it)"
    browser = spawn(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1300,1000",
            "--virtual-time-budget=6000",
            *args,
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = browser.communicate(timeout=180)
    finally:
        stop_tree(browser, signal.SIGKILL, timeout=5)  # its renderer and GPU helpers too
    return out.decode()


def _kpi(dom: str, element_id: str) -> int:
    m = re.search(rf'id="{element_id}">([^<]*)<', dom)
    assert m, f"#{element_id} not in the page"
    return int(m.group(1)) if m.group(1).strip().isdigit() else -1


def _wait_for_views_above(api: str, views: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{api}/v1/pageviews/totals", timeout=5).json()["views"] <= views:
        assert time.monotonic() < deadline, f"page views stayed at {views}"
        time.sleep(0.5)


@pytest.mark.slow
def test_dashboard_shows_live_numbers_matching_the_api(tmp_path: Path) -> None:
    env, ports = up_env(tmp_path)
    log = tmp_path / "up.log"
    up = spawn(
        [sys.executable, "-m", "clickflow", "up", "--demo"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        # Generous: on a busy 2-core machine the whole stack can take minutes to come up.
        deadline = time.monotonic() + 240
        views = 0
        while views == 0:
            assert time.monotonic() < deadline, "no page views reached the API"
            assert up.poll() is None, log.read_text()[-3000:]
            try:
                views = httpx.get(f"{api}/v1/pageviews/totals", timeout=5).json()["views"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        # Speed the demo up so numbers change between two looks.
        httpx.post(
            f"http://127.0.0.1:{ports['generator']}/control",
            json={"domain": "pageviews", "rate": 200},
            timeout=5,
        )
        seen = []
        for _ in range(2):
            before = httpx.get(f"{api}/v1/pageviews/totals", timeout=5).json()["views"]
            dom = _chromium(f"{api}/#pageviews", tmp_path, "--dump-dom")
            after = httpx.get(f"{api}/v1/pageviews/totals", timeout=5).json()["views"]
            shown = _kpi(dom, "pv-views")
            assert 0 < before <= shown <= after, (before, shown, after)
            m = re.search(r'id="pv-chart"[^>]*data-points="(\d+)"', dom) or re.search(
                r'data-points="(\d+)"[^>]*id="pv-chart"', dom
            )
            assert m and int(m.group(1)) > 0, "the chart has no points"
            seen.append(shown)
            _wait_for_views_above(api, after)  # the next look has new numbers to show
        assert seen[1] > seen[0], f"numbers did not change: {seen}"
        OUTPUT.mkdir(exist_ok=True)
        for tab in ("pageviews", "pipelines"):
            shot = OUTPUT / f"dashboard-{tab}.png"
            _chromium(f"{api}/#{tab}", tmp_path, f"--screenshot={shot}")
            assert shot.stat().st_size > 10_000
    finally:
        # As Ctrl-C would; whatever is still running after the grace period is killed.
        stop_tree(up, signal.SIGINT, timeout=60)
