"""`GET /debug/profile` of an idle service: py-spy finds no thread running Python code, so
the answer is an empty profile in the format asked for that says why, never an error."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clickflow.runtime.ports import free_port
from tests import processes

# A service that does nothing: the process HTTP endpoint with no pipeline beside it.
IDLE_SERVICE = """
import sys
from clickflow.config import Settings
from clickflow.observability.process_http import create_process_app
from clickflow.runtime.http_server import run_app

app = create_process_app(Settings(profiling=True, api_token=None), [], {})
run_app(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@pytest.fixture
def idle_service(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "service.log", "ab")  # noqa: SIM115 - closed in finally
    proc = processes.spawn(
        [sys.executable, "-c", IDLE_SERVICE, str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not answer"
            time.sleep(0.1)
        yield url
    finally:
        processes.stop_tree(proc, timeout=10)
        log.close()


def idle_profile(url: str, fmt: str) -> httpx.Response:
    """The profile of the idle service, without idle=true. A sample can catch the service
    waking up (its once-a-second tick, or the request itself on a loaded machine): tried
    again then, a few times."""
    params = {"seconds": 1, "rate": 20, "format": fmt}
    for _ in range(3):
        r = httpx.get(f"{url}/debug/profile", params=params, timeout=60)
        assert r.status_code == 200, r.text
        if r.headers.get("x-profile-samples") == "0":
            break
    return r


def test_profile_of_an_idle_service_is_empty_and_says_why(idle_service: str) -> None:
    svg = idle_profile(idle_service, "flamegraph")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.headers["x-profile-samples"] == "0"
    assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    assert "no active samples in 1 s" in svg.text and "idle=true" in svg.text

    r = idle_profile(idle_service, "speedscope")
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-profile-samples"] == "0"
    profile = r.json()
    assert profile["$schema"].startswith("https://www.speedscope.app/")
    # speedscope opens a file with one profile; its name is the note.
    [empty] = profile["profiles"]
    assert empty["samples"] == [] and empty["weights"] == []
    assert "no active samples in 1 s" in empty["name"] and "idle=true" in empty["name"]

    # With idle=true the waiting threads are sampled: a real profile, no note.
    params = {"seconds": 1, "rate": 20, "idle": "true"}
    r = httpx.get(f"{idle_service}/debug/profile", params=params, timeout=60)
    assert r.status_code == 200, r.text
    assert int(r.headers["x-profile-samples"]) > 0
    profile = r.json()
    assert any(p["samples"] for p in profile["profiles"])
    assert not any("no active samples" in p["name"] for p in profile["profiles"])
