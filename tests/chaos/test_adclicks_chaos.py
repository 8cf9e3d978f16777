"""Ad clicks (billing numbers) under fire: the consumer SIGKILLed again and again while
clicks, late clicks, re-sent copies and broken records keep arriving. Every valid click is
counted once in the raw table and in the minute aggregates; the DLQ holds the broken ones."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from tests.domains.adclicks.streams import make_stream

from .harness import (
    PROFILES,
    RESULTS,
    SHORT,
    PipelineProcess,
    Profile,
    Report,
    Sender,
    base_env,
    caught_up,
    check_dlq,
    committed,
    dlq_sources,
    shake,
    sql,
    wait_until,
)


@pytest.mark.parametrize("profile", PROFILES)
def test_adclicks_survive_repeated_kills(
    base_settings: Settings, redis_url: str, tmp_path: Path, profile: Profile
) -> None:
    started = time.monotonic()
    report = Report("adclicks", profile.name)
    topic = f"chaos-ad-{uuid.uuid4().hex[:8]}"
    group = "clickflow-adclicks"
    ensure_topics(
        base_settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)]
    )
    env = {
        **base_env(base_settings, tmp_path / "data"),
        "CLICKFLOW_ADCLICKS_TOPIC": topic,
        "CLICKFLOW_REDIS_URL": redis_url,  # click_id claims
    }
    proc = PipelineProcess(["adclicks"], env, tmp_path / "process.log")
    stream = make_stream(profile.events, seed=21, topic=topic, copy_share=0.05)
    sender = Sender(
        base_settings, topic, [(ev.key, ev.value, p) for ev, p in stream.sends], profile.rate
    )
    sender.start()
    # ClickHouse is in the consumer's process (chDB): killing it mid-insert is its outage.
    no_outage = Profile(**{**profile.__dict__, "outages": 0, "kills": profile.kills + 1})
    if profile is SHORT:
        no_outage = Profile(**{**profile.__dict__, "outages": 0})
    try:
        shake(
            proc,
            no_outage,
            report,
            lambda: sum(committed(base_settings, group, topic, 4).values()),
            [],
            random.Random(7),
        )
        sender.finish()
        ends = sender.ends()
        wait_until(
            lambda: caught_up(base_settings, [group], topic, ends, 4), proc, 120, "the last commit"
        )
        assert proc.stop() == 0, proc.tail()
    finally:
        proc.stop()

    broken = {sender.landed[i] for i, (ev, _p) in enumerate(stream.sends) if ev.broken is not None}
    report.sent = len(stream.sends)
    report.valid = len(stream.valid)
    raw, minute = sql(
        env,
        "SELECT click_id, count() AS c FROM ad_clicks_raw GROUP BY click_id",
        "SELECT ad_id, sum(clicks) AS n FROM ad_clicks_minute GROUP BY ad_id",
    )
    stored = {r["click_id"]: int(r["c"]) for r in raw}
    valid = stream.valid.keys()
    report.lost = len(valid - stored.keys())
    report.duplicated = sum(c - 1 for c in stored.values()) + len(stored.keys() - valid)
    check_dlq(report, dlq_sources(base_settings, dlq_topic(topic), 4), broken)  # type: ignore[arg-type]
    report.seconds = time.monotonic() - started
    RESULTS.append(report)

    assert (report.lost, report.duplicated) == (0, 0)
    per_ad = {r["ad_id"]: int(r["n"]) for r in minute}
    assert per_ad == dict(Counter(t["ad_id"] for t in stream.valid.values()))
    assert report.dlq_got == report.dlq_expected == stream.broken
