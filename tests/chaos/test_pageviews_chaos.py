"""Page views under fire: the consumer SIGKILLed mid-stream, Redis (the duplicate claims)
stopped and restarted, while the generator keeps sending. The raw table, both rollups, the
error table and the DLQ must equal the generator's ground truth."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from tests.domains.pageviews.support import (
    ROLLUP_SQL,
    as_comparable,
    expected_rollups,
    rows_to_comparable,
)

from .harness import (
    PROFILES,
    MakeSetup,
    Profile,
    Store,
    caught_up,
    check_dlq,
    committed,
    shake,
    sql,
    wait_until,
)


@pytest.mark.parametrize("profile", PROFILES)
def test_pageviews_survive_kills_and_redis_outages(
    base_settings: Settings, tmp_path: Path, profile: Profile, chaos_setup: MakeSetup
) -> None:
    run = chaos_setup("pageviews", profile)
    report, topic, env = run.report, run.topic, run.env
    group = "clickflow-pageviews"
    redis = run.redis()
    proc = run.pipeline(["pageviews"], "--delivery", "exactly-once")
    truth_path = tmp_path / "truth.jsonl"
    engine = Engine(
        base_settings,
        PageViewFactory(topic=topic, users=300, pages=40),
        "pageviews-chaos",
        RateModel(mode="fixed", rate=profile.rate),
        Mix(broken_share=0.05, duplicate_share=0.02),
        GeneratorOptions(seed=11),
        truth_path=truth_path,
    )
    sender = threading.Thread(target=engine.run, kwargs={"count": profile.events}, daemon=True)
    sender.start()
    try:
        shake(
            proc,
            profile,
            report,
            lambda: sum(committed(base_settings, group, topic, 4).values()),
            [Store("redis", redis.stop, redis.start)],
            random.Random(5),
        )
        sender.join(120)
        assert not sender.is_alive()
        engine.close()
        truth = read_truth(truth_path)
        ends: dict[int, int] = {}
        for line in truth:
            ends[line["partition"]] = max(ends.get(line["partition"], 0), line["offset"] + 1)
        wait_until(
            lambda: caught_up(base_settings, [group], topic, ends, 4), proc, 120, "the last commit"
        )
        assert proc.stop() == 0, proc.tail()
    finally:
        proc.stop()
        redis.stop()

    valid = {line["id"] for line in truth if not line["broken"]}
    broken = {(line["partition"], line["offset"]) for line in truth if line["broken"]}
    report.sent = len(truth)
    report.valid = len(valid)
    grouped, minute_rows, hour_rows, errors = sql(
        env,
        GROUPED,
        ROLLUP_SQL.format(table="page_views_agg_minute"),
        ROLLUP_SQL.format(table="page_views_agg_hour"),
        "SELECT kafka_partition AS p, kafka_offset AS o FROM processing_errors",
    )
    stored = {r["event_id"]: int(r["c"]) for r in grouped}
    report.lost = len(valid - stored.keys())
    report.duplicated = sum(c - 1 for c in stored.values()) + len(stored.keys() - valid)
    check_dlq(report, run.dead_letters(), broken)
    run.record()

    assert report.faults["consumer SIGKILL"] == profile.kills
    assert (report.lost, report.duplicated) == (0, 0)
    minute, hour, n_valid, n_broken = expected_rollups(truth_path)
    assert rows_to_comparable(tuple(r.values()) for r in minute_rows) == as_comparable(minute)
    assert rows_to_comparable(tuple(r.values()) for r in hour_rows) == as_comparable(hour)
    assert {(int(r["p"]), int(r["o"])) for r in errors} == broken
    assert len(errors) == n_broken == len(broken)
    assert report.dlq_got == report.dlq_expected


GROUPED = "SELECT event_id, count() AS c FROM page_views_raw GROUP BY event_id"
