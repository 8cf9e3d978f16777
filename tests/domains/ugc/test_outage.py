"""Page-view pairing across an outage of twice the max wait (issue 21, cases 1 and 2).

Time is injected through the records' Kafka timestamps (the pairing clock), so the real
12 h wait and a 24 h outage run in seconds. ``clickflow process ugc`` handles a first
hour of traffic and stops; 24 h of Kafka time arrive while it is down (ends in time and
too late, starts for ends that came first, new page views, re-sends); a consumer started
after the outage is SIGKILLed in the middle of an orphan sweep (its intent and tombstones
recorded, its rows not inserted); another one runs to the end. Every page view is then
exactly the independent truth on the Kafka clock: none lost, none doubled.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics

from .support import (
    PAGE_VIEW_SQL,
    committed,
    expected_by_kafka_time,
    half,
    log_with_times,
    produce_at,
    record,
)

H = 3_600_000
WAIT = 12 * H

# `clickflow process ugc` whose handler kills its own process when the orphan sweep is about
# to insert: the sweep's intent and tombstones are in Redis, its rows are not in ClickHouse.
KILLED_IN_SWEEP = """
import os, signal, sys
from clickflow.domains.ugc import pipeline

def kill_in_sweep(point):
    if point == "sweep_insert":
        os.kill(os.getpid(), signal.SIGKILL)

init = pipeline.UgcHandler.__init__
def patched(self, settings, config=None, background_sweep=True, fault=None):
    init(self, settings, config, background_sweep, kill_in_sweep)
pipeline.UgcHandler.__init__ = patched
sys.argv = ["clickflow", *sys.argv[1:]]
from clickflow.cli import app
app()
"""
READ_BACK = """
import json, sys
from clickflow.config import Settings
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.stores.clickhouse import clickhouse_client
settings = Settings()
UgcHandler(settings, background_sweep=False).sweep(now_ms=int(sys.argv[2]))
client = clickhouse_client(settings)
rows = client.query(sys.argv[1]).result_rows
raw = client.query("SELECT count() FROM ugc_page_view").result_rows[0][0]
print(json.dumps({"rows": [list(r) for r in rows], "raw": raw}))
"""


def traffic(t0: int, rng: random.Random) -> tuple[list, list]:
    """(before the outage, during it) as (record, Kafka timestamp) lists; server timestamps
    equal Kafka timestamps, as the collector stamps both."""
    before: list[tuple[bytes, int]] = []
    during: list[tuple[bytes, int]] = []

    def at(target: list, kind: str, user: str, pv: str, ts: int) -> None:
        target.append((half(kind, user, pv, ts, rng.choice(["movie", "main"])), ts))

    for i in range(240):
        u, pv, t = f"user-{i % 60}", f"pv-{i}", t0 + i * 10_000
        at(before, "start", u, pv, t)
        group = i % 6
        if group == 0:  # ends at once
            at(before, "end", u, pv, t + 5_000)
        elif group == 1:  # ends 11 h later, during the outage: pairs
            at(during, "end", u, pv, t + 11 * H)
        elif group == 2:  # ends 14 h later: too late, the start alone is a page view
            at(during, "end", u, pv, t + 14 * H)
        elif group == 3:  # never ends
            pass
        elif group == 4:  # re-sent start during the outage, end 10 h later
            at(during, "start", u, pv, t + 2 * H)
            at(during, "end", u, pv, t + 10 * H)
        else:  # the end came first; its start during the outage (in time or not)
            before[-1] = (half("end", u, pv, t), t)
            at(during, "start", u, pv, t + (5 * H if i % 12 < 6 else 20 * H))
    for i in range(80):  # page views opened and (some) closed inside the outage
        u, pv, t = f"user-{i % 60}", f"pv-out-{i}", t0 + 13 * H + i * 60_000
        at(during, "start", u, pv, t)
        if i % 2:
            at(during, "end", u, pv, t + rng.choice([H, 9 * H, 13 * H]))
    for j in range(48):  # other events every half hour on every user's partition
        for u in range(0, 60, 7):
            click = {"element_type": "trailer", "page_type": "movie"}
            ts = t0 + H + j * H // 2
            during.append((record("element_click", f"user-{u}", click, ts), ts))
    for u in range(0, 60, 7):  # last starts: only the sweep of an idle partition ends them
        at(during, "start", f"user-{u}", f"pv-last-{u}", t0 + 26 * H)
    during.sort(key=lambda r: r[1])  # records reach Kafka in time order
    return before, during


@pytest.mark.chaos  # ~3 min on a shared 2-core machine; tests/domains/ugc/test_sweep.py
# covers the same clock in-process within make test
def test_outage_of_twice_the_wait_with_a_kill_in_the_sweep_loses_and_doubles_nothing(
    settings: Settings, redis_url: str, topic: str, tmp_path: Path
) -> None:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    t0 = (int(time.time()) // 3600 - 72) * 3600 * 1000  # three days ago
    before, during = traffic(t0, random.Random(21))
    group = f"g-{topic}"
    env = {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "CLICKFLOW_CLICKHOUSE_DATABASE": "ugc_outage",
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_REDIS_URL": redis_url,
        "CLICKFLOW_UGC_TOPIC": topic,
        "CLICKFLOW_UGC_REDIS_PREFIX": f"ugc{uuid.uuid4().hex[:8]}:",
        "CLICKFLOW_UGC_SWEEP_INTERVAL_SECONDS": "0.3",
        "CLICKFLOW_LOG_LEVEL": "INFO",
        "CLICKFLOW_KAFKA_SESSION_TIMEOUT_MS": "3000",
    }
    args = ["process", "ugc", "--records", "100", "--seconds", "0.2", "--group", group]
    log_path = tmp_path / "process.log"
    log = open(log_path, "ab")
    procs: list[subprocess.Popen] = []

    def start(extra_env: dict[str, str], killed_in_sweep: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, "-c", KILLED_IN_SWEEP] if killed_in_sweep else [sys.executable]
        cmd += args if killed_in_sweep else ["-m", "clickflow", *args]
        p = subprocess.Popen(
            cmd, env=env | extra_env, stdout=log, stderr=log, start_new_session=True
        )
        procs.append(p)
        return p

    def wait_for(n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while committed(settings, topic, group) < n:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"stuck below {n}"
            time.sleep(0.1)

    try:
        # Before the outage. The wall clock is three days ahead of these records: an idle
        # partition would be swept at once, so this run moves no clock by the wall.
        last = produce_at(settings, topic, before)
        p1 = start({"CLICKFLOW_UGC_IDLE_CLOCK_MARGIN_SECONDS": str(10 * 86400)})
        wait_for(sum(o + 1 for o in last.values()), p1)
        os.killpg(p1.pid, signal.SIGTERM)
        assert p1.wait(30) == 0
        # The outage: 24 h of Kafka time arrive while nothing consumes.
        last2 = produce_at(settings, topic, during)
        last = {p: max(o, last.get(p, -1)) for p, o in last2.items()} | {
            p: o for p, o in last.items() if p not in last2
        }
        total = sum(o + 1 for o in last.values())
        # After it: killed in the middle of its first orphan sweep that has rows to insert.
        p2 = start({"CLICKFLOW_UGC_IDLE_CLOCK_MARGIN_SECONDS": "0"}, killed_in_sweep=True)
        assert p2.wait(120) == -signal.SIGKILL, log_path.read_text()[-3000:]
        # Another consumer runs to the end and redoes the interrupted sweep.
        p3 = start({"CLICKFLOW_UGC_IDLE_CLOCK_MARGIN_SECONDS": "0"})
        wait_for(total, p3, timeout=90)
        deadline = time.monotonic() + 30
        while b"redoing an interrupted orphan sweep" not in log_path.read_bytes():
            assert time.monotonic() < deadline, "the interrupted sweep was not redone"
            time.sleep(0.1)
        os.killpg(p3.pid, signal.SIGTERM)
        assert p3.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        log.close()

    far_future = int(time.time() * 1000) + 10 * 86_400_000
    out = subprocess.run(
        [sys.executable, "-c", READ_BACK, PAGE_VIEW_SQL, str(far_future)],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    got = json.loads(out.stdout)
    rows = sorted(tuple(r) for r in got["rows"])
    expected = expected_by_kafka_time(log_with_times(settings, topic, last), WAIT)
    assert len(expected) == 240 + 80 + 9
    assert sum(r[6] for r in expected) > 100  # paired
    assert sum(1 - r[6] for r in expected) > 100  # unpaired
    assert rows == expected
