"""`clickflow process` serves /healthz and /metrics; when its pipeline hangs with records
pending, health turns red and the supervisor of `clickflow up` restarts the process."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psycopg

from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.runtime.ports import free_port
from clickflow.runtime.supervisor import Child, Supervisor

from .support import Truth, make_events
from .test_pipeline import count, produce


def process_env(settings: Settings, topic: str, tmp_path: Path, port: int, **more: str) -> dict:
    return {
        **os.environ,
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_POSTGRES_URL": settings.postgres_url or "",
        "CLICKFLOW_REDIS_URL": settings.redis_url or "",
        "CLICKFLOW_TELECOM_TOPIC": topic,
        "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
        "CLICKFLOW_PROCESS_PORT": str(port),
        **more,
    }


def ingest_cmd(topic: str, records: int = 100) -> list[str]:
    cmd = [sys.executable, "-m", "clickflow", "process", "telecom-ingest"]
    return cmd + ["--records", str(records), "--seconds", "0.2", "--group", f"ingest-{topic}"]


def test_red_health_restarts_the_process(tc_settings: Settings, topic: str, tmp_path: Path) -> None:
    ensure_topics(tc_settings.kafka_bootstrap, [TopicSpec(topic, 4)])
    port = free_port()
    env = process_env(tc_settings, topic, tmp_path, port, CLICKFLOW_PIPELINE_STALL_SECONDS="2")
    cmd = ingest_cmd(topic)
    url = f"http://127.0.0.1:{port}"
    child = Child("process-telecom-ingest", cmd, env, health_url=f"{url}/healthz")
    sup = Supervisor(log_dir=tmp_path / "logs", health_interval=0.5, unhealthy_after=3)
    events = make_events(300, datetime(2031, 3, 1, tzinfo=UTC), timedelta(days=1), users=10)
    truth = Truth()
    for e in events:
        truth.add(e)
    raw = "SELECT count(*) FROM telecom.events_raw"

    def until(cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            sup.check()
            log = (tmp_path / "logs" / f"{child.name}.log").read_text(errors="replace")
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log[-3000:]}"
            time.sleep(0.2)

    def health() -> tuple[int, dict]:
        try:
            r = httpx.get(f"{url}/healthz", timeout=3)
        except httpx.HTTPError:
            return 0, {}
        return r.status_code, r.json()

    lock = psycopg.connect(tc_settings.postgres_url or "")
    try:
        sup.add(child)
        until(lambda: health()[0] == 200, 60, "the process to answer /healthz")
        status, body = health()
        assert body["dependencies"] == {"pipeline:telecom-ingest": "ok"}
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'clickflow_pipeline_up{pipeline="telecom-ingest"} 1.0' in metrics
        assert httpx.get(f"{url}/openapi.json", timeout=5).status_code == 200
        first_pid = child.proc.pid

        # The sink hangs: another transaction holds the table's lock, inserts wait forever.
        lock.execute("LOCK TABLE telecom.events_raw IN ACCESS EXCLUSIVE MODE")
        produce(tc_settings, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
        until(lambda: health()[0] == 503, 60, "health to turn red")
        why = health()[1]["dependencies"]["pipeline:telecom-ingest"]
        assert why.startswith("stalled: records pending"), why
        until(lambda: child.health_restarts == 1, 60, "the supervisor to restart it")
        lock.rollback()  # the sink is back
        until(lambda: child.proc is not None and child.proc.pid != first_pid, 60, "the new pid")
        until(lambda: count(tc_settings, raw) >= len(truth.events), 90, "every event stored")
        until(lambda: health()[0] == 200, 30, "health to turn green")
        assert count(tc_settings, raw) == len(truth.events)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'clickflow_consumer_records_total{pipeline="telecom-ingest"}' in metrics
    finally:
        lock.close()
        sup.stop(grace=10)
