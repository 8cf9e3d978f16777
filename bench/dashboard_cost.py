"""What an open dashboard costs the query API: CPU of the `serve` process with demo traffic,
without and then with the dashboard open in headless Chromium (it refreshes every 2 s).
Goal: the dashboard adds less than 5% of one core."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from _common import load_average, machine, today  # noqa: E402

from tests.runtime.up_env import up_env  # noqa: E402


def serve_process(up: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(up.pid).children(recursive=True):
        if "serve" in child.cmdline():
            return child
    raise RuntimeError("no serve process")


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clickflow-dash-"))
    env, ports = up_env(tmp)
    up = subprocess.Popen(
        [sys.executable, "-m", "clickflow", "up", "--demo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
    )
    api = f"http://127.0.0.1:{ports['api']}"
    browser = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the system did not come up")
            time.sleep(0.5)
        time.sleep(10)  # let start-up work settle
        serve = serve_process(up)
        c0 = cpu_seconds(serve)
        time.sleep(args.seconds)
        base = (cpu_seconds(serve) - c0) / args.seconds
        chromium = shutil.which("chromium")
        if not chromium:
            raise SystemExit("chromium is needed (apt-get install chromium)")
        browser = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp / 'profile'}",
                "--remote-debugging-port=0",
                f"{api}/#pageviews",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(5)
        c1 = cpu_seconds(serve)
        time.sleep(args.seconds)
        with_dash = (cpu_seconds(serve) - c1) / args.seconds
    finally:
        if browser is not None:
            browser.send_signal(signal.SIGTERM)
        up.send_signal(signal.SIGINT)
        up.wait(60)
    added = with_dash - base
    m = f"{machine()}, {load_average()}"
    print(f"serve CPU without dashboard: {base * 100:.1f}% of a core")
    print(f"serve CPU with dashboard:    {with_dash * 100:.1f}% of a core")
    print(f"dashboard adds:              {added * 100:.1f}% of a core (goal < 5%)")
    (Path(__file__).parent / "results" / "dashboard.md").write_text(
        "| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        f"| CPU the open dashboard adds to the query API (demo traffic, page views tab, 2 s "
        f"refresh) | < 5% of one core | {added * 100:.1f}% (serve {base * 100:.1f}% -> "
        f"{with_dash * 100:.1f}%) | {m} | {today()} |\n"
    )


if __name__ == "__main__":
    main()
