"""UGC through the whole front door under fire: clients post to the collector (restarted
while they post), the ugc consumer is SIGKILLed mid-pairing, Redis (the pairing state) is
stopped and restarted. Every event the collector accepted (202) is stored exactly once, the
paired page views equal the truth computed from what Kafka holds, events the collector
refused are nowhere, and the DLQ holds exactly the broken records a bad producer wrote."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import jwt
import orjson
import pytest

from clickflow.config import Settings
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.runtime.ports import free_port, wait_for_port
from tests.domains.ugc.support import PAGE_VIEW_SQL, expected_page_views

from .harness import (
    PROFILES,
    SHORT,
    MakeSetup,
    Profile,
    Sender,
    Store,
    caught_up,
    check_dlq,
    committed,
    read_topic,
    shake,
    sql,
    stop_group,
    wait_until,
)

SECRET = "chaos-suite-jwt-secret-of-at-least-32-bytes"
TABLES = {
    "element_click": "ugc_element_click",
    "quality_change": "ugc_quality_change",
    "video_complete": "ugc_video_complete",
    "search_filter": "ugc_search_filter",
}
HALVES = ("page_view_start", "page_view_end")
COUNT_BY_ID = "SELECT event_id, count() AS c FROM {table} GROUP BY event_id"
BATCH = 20


class Collector:
    """`clickflow collect` on a fixed port, restartable."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "CLICKFLOW_COLLECTOR_PORT": str(self.port)}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        cmd = [sys.executable, "-m", "clickflow", "collect"]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=out, stderr=out, start_new_session=True
        )
        out.close()
        assert wait_for_port("127.0.0.1", self.port, timeout=30), self.log.read_text()[-2000:]

    def stop(self) -> None:
        """Graceful: uvicorn finishes the requests in flight, the producer flushes, and the
        process exits by re-raising SIGTERM."""
        if self.proc is not None:
            rc = stop_group(self.proc, signal.SIGTERM)
            self.proc = None
            assert rc in (0, -signal.SIGTERM), self.log.read_text()[-2000:]

    def restart(self) -> None:
        self.stop()
        self.start()


class Client(threading.Thread):
    """Posts the factory's events in batches at ``rate`` events/s; a batch is re-sent (same
    event_ids) until the collector answers, as a client library would. Every 25th event is
    invalid (the collector must refuse it)."""

    def __init__(self, url: str, factory: UgcEventFactory, count: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.factory, self.count, self.rate = url, factory, count, rate
        self.accepted: dict[str, str] = {}  # event_id -> kind
        self.refused: list[str] = []  # event_ids the collector refused
        self.retries = 0
        self.errors: list[str] = []
        self._tokens: dict[str, str] = {}

    def envelope(self, value: bytes) -> dict:
        rec = orjson.loads(value)
        env = {"event": rec["event"], "event_id": rec["event_id"], "data": rec["data"]}
        if rec["user_id"] != "anonymous":
            token = self._tokens.get(rec["user_id"])
            if token is None:
                claims = {"sub": rec["user_id"], "exp": int(time.time()) + 3600}
                token = self._tokens[rec["user_id"]] = jwt.encode(claims, SECRET, "HS256")
            env["token"] = token
        return env

    def run(self) -> None:
        rng = random.Random(31)
        started = time.monotonic()
        values = [self.factory.valid(rng, time.time()).value for _ in range(self.count)]
        values += [e.value for e in self.factory.pending()]
        with httpx.Client(base_url=self.url, timeout=10) as http:
            for i in range(0, len(values), BATCH):
                batch = [self.envelope(v) for v in values[i : i + BATCH]]
                if (i // BATCH) % 5 == 4:  # an invalid event in every fifth batch
                    bad = dict(batch[0], event_id=uuid.uuid4().hex)
                    bad["data"] = dict(bad["data"], unexpected_field=1)
                    batch.append(bad)
                self.post(http, batch)
                ahead = (i + BATCH) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def post(self, http: httpx.Client, batch: list[dict]) -> None:
        deadline = time.monotonic() + 60
        while batch:
            try:
                r = http.post("/v1/events", json=batch)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code in (202, 422):
                left = []
                for res in r.json()["results"]:
                    ev = batch[res["index"]]
                    if res["status"] == "accepted":
                        self.accepted[ev["event_id"]] = ev["event"]
                    elif res["status"] == "rejected":
                        self.refused.append(ev["event_id"])
                    else:
                        left.append(ev)
                batch = left
                if not batch:
                    return
            elif r is not None and r.status_code != 503:
                self.errors.append(f"{r.status_code}: {r.text[:300]}")
                return
            self.retries += 1
            if time.monotonic() > deadline:
                self.errors.append("the collector did not come back in 60 s")
                return
            time.sleep(0.2)


def sweep_prelude(prefix: str) -> str:
    """Expire the true orphans before reading (every end has been processed by then)."""
    far_future = int(time.time() * 1000) + 10 * 86_400_000
    return (
        "from clickflow.domains.ugc.config import UgcConfig\n"
        "from clickflow.domains.ugc.pipeline import UgcHandler\n"
        f"UgcHandler(Settings(), UgcConfig(redis_prefix={prefix!r}), background_sweep=False)"
        f".sweep(now_ms={far_future})\n"
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_ugc_survives_collector_restarts_kills_and_redis_outages(
    base_settings: Settings, tmp_path: Path, profile: Profile, chaos_setup: MakeSetup
) -> None:
    run = chaos_setup("ugc", profile)
    report, topic, env = run.report, run.topic, run.env
    group = "clickflow-ugc"
    redis = run.redis()
    prefix = f"pv{uuid.uuid4().hex[:6]}:"
    env["CLICKFLOW_UGC_REDIS_PREFIX"] = prefix
    collector = Collector(
        {
            **env,
            "CLICKFLOW_DATA_DIR": str(tmp_path / "collector"),
            "CLICKFLOW_COLLECTOR_TOPIC": topic,
            "CLICKFLOW_COLLECTOR_RATE_PER_SECOND": "0",
            "CLICKFLOW_JWT_SECRET": SECRET,
        },
        tmp_path / "collector.log",
    )
    collector.start()
    proc = run.pipeline(["ugc"])
    factory = UgcEventFactory(users=300, max_end_delay=100, topic=topic, seed=23)
    client = Client(f"http://127.0.0.1:{collector.port}", factory, profile.events, profile.rate)
    # A misbehaving producer writes broken records straight to the topic (for the DLQ).
    rng = random.Random(8)
    bad = [factory.broken(rng, time.time(), k) for k in factory.breakages for _ in range(3)]
    bad_sender = Sender(base_settings, topic, [(b.key, b.value, None) for b in bad], 5)
    client.start()
    bad_sender.start()
    faults = profile
    if profile is SHORT:  # keep `make test` short: no Redis outage, one collector restart
        faults = Profile(**{**profile.__dict__, "outages": 0, "collector_restarts": 1})
    try:
        shake(
            proc,
            faults,
            report,
            lambda: sum(committed(base_settings, group, topic, 4).values()),
            [Store("redis", redis.stop, redis.start)],
            random.Random(2),
            extra=[("collector restart", collector.restart)],
        )
        client.join(180)
        assert not client.is_alive() and not client.errors, client.errors[:3]
        bad_sender.finish()
        records = read_topic(base_settings, topic, 4)
        ends: dict[int, int] = {}
        for m in records:
            ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
        wait_until(
            lambda: caught_up(base_settings, [group], topic, ends, 4), proc, 120, "the last commit"
        )
        assert proc.stop() == 0, proc.tail()
        collector.stop()
        queries = [COUNT_BY_ID.format(table=t) for t in TABLES.values()]
        results = sql(env, PAGE_VIEW_SQL, *queries, prelude=sweep_prelude(prefix))
    finally:
        proc.stop()
        if collector.proc is not None:
            stop_group(collector.proc, signal.SIGKILL)
        redis.stop()

    values = [m.value() for m in records]
    in_kafka = Counter(
        orjson.loads(v).get("event_id") for v in values if v.startswith(b"{") and v.endswith(b"}")
    )
    want_views = Counter(expected_page_views(values))
    got_views = Counter(tuple(r.values()) for r in results[0])
    stored: Counter = Counter()
    for rows in results[1:]:
        stored.update({r["event_id"]: int(r["c"]) for r in rows})
    accepted = {e for e, kind in client.accepted.items() if kind not in HALVES}
    report.sent = len(client.accepted) + len(client.refused) + len(bad)
    report.valid = len(client.accepted)
    report.lost = len(accepted - stored.keys()) + sum((want_views - got_views).values())
    report.duplicated = sum(c - 1 for c in stored.values()) + len(stored.keys() - accepted)
    report.duplicated += sum((got_views - want_views).values())
    broken = {bad_sender.landed[i] for i in range(len(bad))}
    check_dlq(report, run.dead_letters(), broken)  # type: ignore[arg-type]
    run.record()

    assert (report.lost, report.duplicated) == (0, 0)
    assert all(in_kafka[e] == 1 for e in client.accepted), "an accepted event is not in Kafka once"
    assert not any(in_kafka[e] for e in client.refused), "a refused event reached Kafka"
    assert len(want_views) > 50
    assert report.dlq_got == report.dlq_expected == len(bad)


def _json_or_none(value: bytes) -> dict | None:
    try:
        out = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return out if isinstance(out, dict) else None
