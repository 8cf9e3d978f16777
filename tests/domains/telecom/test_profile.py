"""`GET /debug/profile`: a py-spy profile of a busy `clickflow process` shows the pipeline's
functions; off unless enabled; behind the API token."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.health import health_router
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.runtime.ports import free_port

from .support import make_events
from .test_pipeline import count, produce
from .test_process_health import ingest_cmd, process_env

TOKEN = "profile-token-\x00-'; DROP"  # any text; compared, never spliced


def frames(profile: dict) -> set[tuple[str, str]]:
    return {(f["name"], f.get("file") or "") for f in profile["shared"]["frames"]}


def test_profile_of_a_busy_pipeline_shows_its_functions(
    tc_settings: Settings, topic: str, tmp_path: Path
) -> None:
    ensure_topics(tc_settings.kafka_bootstrap, [TopicSpec(topic, 4)])
    port = free_port()
    token = "s3cret"
    env = process_env(
        tc_settings, topic, tmp_path, port, CLICKFLOW_PROFILING="1", CLICKFLOW_API_TOKEN=token
    )
    events = make_events(60000, datetime(2031, 4, 1, tzinfo=UTC), timedelta(days=3), users=50)
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()  # ends the feeder below
    log = open(tmp_path / "process.log", "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        ingest_cmd(topic, records=500),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "process.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "process not healthy"
            time.sleep(0.2)
        assert httpx.get(f"{url}/debug/profile?seconds=1", timeout=10).status_code == 401
        # Records keep arriving while the profile is taken: a backlog produced up front can
        # be drained (or still wait for the group's assignment) before sampling starts.
        records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]

        def feed() -> None:
            for start in range(1000, len(records), 1000):
                if stop.is_set():
                    return
                produce(tc_settings, topic, records[start : start + 1000])
                time.sleep(0.05)

        produce(tc_settings, topic, records[:1000])
        raw = "SELECT count(*) FROM telecom.events_raw"
        deadline = time.monotonic() + 120
        while count(tc_settings, raw) == 0:  # the pipeline owns its partitions and writes
            assert time.monotonic() < deadline, "the pipeline stored nothing"
            time.sleep(0.1)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        before = count(tc_settings, raw)
        auth = {"Authorization": f"Bearer {token}"}
        # Idle samples included: the handler spends most of its time waiting on PostgreSQL,
        # which py-spy counts as idle, so an active-only profile can miss it.
        params = {"seconds": 3, "idle": "true"}
        r = httpx.get(f"{url}/debug/profile", params=params, headers=auth, timeout=90)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert count(tc_settings, raw) > before, "the pipeline was idle while profiled"
        profile = r.json()
        assert profile["$schema"].startswith("https://www.speedscope.app/")
        seen = frames(profile)
        consumer = {n for n, f in seen if f.endswith("clickflow/kafka/consumer.py")}
        assert "BatchConsumer._loop" in consumer, consumer
        telecom = {n.rsplit(".", 1)[-1] for n, f in seen if "clickflow/domains/telecom/" in f}
        assert telecom & {"handle", "decode_batch", "write", "_copy_stage"}, telecom
        # One profile per thread: the pipeline's is there.
        names = [p["name"] for p in profile["profiles"]]
        assert all(n.startswith("Thread ") for n in names), names
        assert any('"pipeline-telecom-ingest"' in n for n in names), names

        svg = httpx.get(
            f"{url}/debug/profile",
            params={"seconds": 1, "format": "flamegraph", "idle": "true"},
            headers=auth,
            timeout=60,
        )
        assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
        assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _app(settings: Settings) -> TestClient:
    app = FastAPI()
    app.state.settings = settings
    app.include_router(health_router("test", {}))
    return TestClient(app)


def test_profile_is_off_unless_enabled_and_needs_the_token(settings: Settings) -> None:
    with _app(settings.model_copy(update={"profiling": False})) as off:
        r = off.get("/debug/profile", params={"seconds": 1})
        assert r.status_code == 404
        assert r.json()["detail"]["field"] == "CLICKFLOW_PROFILING"
    with _app(settings.model_copy(update={"profiling": False, "api_token": TOKEN})) as off:
        assert off.get("/debug/profile", params={"seconds": 1}).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = off.get("/debug/profile", params={"seconds": 1}, headers=auth)
        assert r.status_code == 404
    on = settings.model_copy(update={"profiling": True, "api_token": TOKEN})
    with _app(on) as client:
        assert client.get("/debug/profile", params={"seconds": 1}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/debug/profile", params={"seconds": 1}, headers=wrong).status_code == 401
        assert client.get("/debug/profile", params={"seconds": 9999}).status_code == 422
        ok = client.get(
            "/debug/profile",
            params={"seconds": 1, "idle": True},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 200, ok.text
        assert "test_profile_is_off_unless_enabled" in ok.text  # this test's own frame, idle
