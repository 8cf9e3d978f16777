"""`clickflow process ugc` killed with SIGKILL in the middle of pairing, then run to the end:
the page views in ClickHouse are exactly the independent truth.

The pipeline runs in subprocesses with their own chDB directory (this pytest process owns
another one), so the results are read back in a subprocess too.
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
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from tests.processes import stop_tree

from .support import BASE_TS, PAGE_VIEW_SQL, committed, expected_page_views, log_order, produce

READ_BACK = """
import json, sys
from clickflow.config import Settings
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.stores.clickhouse import clickhouse_client
settings = Settings()
UgcHandler(settings, background_sweep=False).sweep(now_ms=int(sys.argv[2]))
rows = clickhouse_client(settings).query(sys.argv[1]).result_rows
print(json.dumps([list(r) for r in rows]))
"""


# Several `clickflow process` starts, each a minute on a busy machine.
@pytest.mark.timeout(900)
def test_sigkill_in_the_middle_of_pairing_neither_loses_nor_duplicates(
    settings: Settings, redis_url: str, topic: str, tmp_path: Path
) -> None:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    factory = UgcEventFactory(users=500, max_end_delay=150, topic=topic, seed=13)
    rng = random.Random(17)
    values = [factory.valid(rng, BASE_TS / 1000 + i * 0.25).value for i in range(3000)]
    values += [e.value for e in factory.pending()]
    last = produce(settings, topic, values)
    total = sum(o + 1 for o in last.values())
    group = f"g-{topic}"
    env = {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "CLICKFLOW_CLICKHOUSE_DATABASE": "ugc_kill",
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_REDIS_URL": redis_url,
        "CLICKFLOW_UGC_TOPIC": topic,
        "CLICKFLOW_UGC_REDIS_PREFIX": f"pv{uuid.uuid4().hex[:8]}:",
        "CLICKFLOW_LOG_LEVEL": "WARNING",
        # A killed member leaves the group after the session timeout: keep it short.
        "CLICKFLOW_KAFKA_SESSION_TIMEOUT_MS": "3000",
    }
    cmd = [sys.executable, "-m", "clickflow", "process", "ugc", "--records", "200"]
    cmd += ["--seconds", "0.2", "--group", group]
    log = open(tmp_path / "process.log", "ab")

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)

    # Generous: a start (imports, chDB, group join) takes a minute on a busy machine.
    def wait_for(n: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while committed(settings, topic, group) < n:
            assert proc.poll() is None, (tmp_path / "process.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"stuck below {n} of {total}"
            time.sleep(0.05)

    for share in (0.4,):
        proc = start()
        try:
            wait_for(int(total * share), proc)
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere inside a batch
        finally:
            stop_tree(proc, signal.SIGKILL, timeout=10)
        assert committed(settings, topic, group) < total, "killed too late to prove anything"
    proc = start()
    try:
        wait_for(total, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop_tree(proc, signal.SIGKILL, timeout=10)

    # Read back (and expire the true orphans: every end has been processed by now).
    far_future = int(time.time() * 1000) + 10 * 86_400_000
    out = subprocess.run(
        [sys.executable, "-c", READ_BACK, PAGE_VIEW_SQL, str(far_future)],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    rows = sorted(tuple(r) for r in json.loads(out.stdout))
    expected = expected_page_views(log_order(settings, topic, last))
    assert len(expected) > 500
    assert rows == expected
