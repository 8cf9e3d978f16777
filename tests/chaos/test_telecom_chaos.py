"""Telecom usage (billing) under fire: both consumer groups (raw ingest and aggregation) in
one `clickflow process` SIGKILLed mid-stream, PostgreSQL and Redis stopped and restarted,
while the generator keeps sending. Raw events, per-user and global aggregates must equal the
generator's ground truth; the DLQ holds exactly the broken records."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from tests.domains.telecom.support import Truth, expected_aggregates, raw_keys, read_aggregates

from .harness import (
    PROFILES,
    MakeSetup,
    Profile,
    Store,
    caught_up,
    check_dlq,
    committed,
    shake,
    wait_until,
)

GROUPS = ["clickflow-telecom-ingest", "clickflow-telecom-aggregate"]
PARTITIONS = 8


@pytest.mark.parametrize("profile", PROFILES)
def test_telecom_survives_kills_and_store_outages(
    base_settings: Settings, tmp_path: Path, profile: Profile, chaos_setup: MakeSetup
) -> None:
    run = chaos_setup("telecom", profile, PARTITIONS)
    report, topic = run.report, run.topic
    pg, redis = run.postgres(), run.redis()
    proc = run.pipeline(["telecom-ingest", "telecom-aggregate"])
    truth_path = tmp_path / "truth.jsonl"
    engine = Engine(
        base_settings,
        TelecomFactory(users=80, topic=topic, partitions=PARTITIONS, seed=9),
        "telecom-chaos",
        RateModel(mode="fixed", rate=profile.rate),
        Mix(broken_share=0.03, duplicate_share=0.05),
        GeneratorOptions(seed=13),
        truth_path=truth_path,
    )
    sender = threading.Thread(target=engine.run, kwargs={"count": profile.events}, daemon=True)
    sender.start()

    def progress() -> int:
        return min(sum(committed(base_settings, g, topic, PARTITIONS).values()) for g in GROUPS)

    try:
        stores = [Store("postgresql", pg.stop, pg.start), Store("redis", redis.stop, redis.start)]
        shake(proc, profile, report, progress, stores, random.Random(3))
        sender.join(120)
        assert not sender.is_alive()
        engine.close()
        truth = read_truth(truth_path)
        ends: dict[int, int] = {}
        for line in truth:
            ends[line["partition"]] = max(ends.get(line["partition"], 0), line["offset"] + 1)
        wait_until(
            lambda: caught_up(base_settings, GROUPS, topic, ends, PARTITIONS),
            proc,
            120,
            "the last commit of both groups",
        )
        assert proc.stop() == 0, proc.tail()

        expected = Truth()
        for line in truth:
            if not line["broken"]:
                expected.add(line["truth"])
        broken = {(line["partition"], line["offset"]) for line in truth if line["broken"]}
        store = Settings(postgres_url=pg.url)
        keys = raw_keys(store)
        aggregates = read_aggregates(store)
    finally:
        proc.stop()
        pg.remove()
        redis.stop()

    report.sent = len(truth)
    report.valid = len(expected.events)
    report.lost = len(expected.events.keys() - set(keys))
    report.duplicated = len(keys) - len(set(keys)) + len(set(keys) - expected.events.keys())
    # Aggregates count each event once: a difference in the global monthly event count is
    # a lost (negative) or double-counted (positive) event.
    want = expected_aggregates(expected)
    diff = sum(v[0] for v in aggregates["global_month"].values()) - sum(
        v[0] for v in want["global_month"].values()
    )
    report.lost += max(0, -diff)
    report.duplicated += max(0, diff)
    check_dlq(report, run.dead_letters(), broken)
    run.record()

    assert (report.lost, report.duplicated) == (0, 0)
    assert aggregates == want
    assert report.dlq_got == report.dlq_expected
