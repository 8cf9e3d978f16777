"""Ad clicks (billing numbers) under fire: the consumer SIGKILLed again and again while
clicks, late clicks, re-sent copies and broken records keep arriving. Every valid click is
counted once in the raw table and in the minute aggregates; the DLQ holds the broken ones."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from clickflow.config import Settings
from tests.domains.adclicks.support import make_stream

from .harness import (
    PROFILES,
    SHORT,
    MakeSetup,
    Profile,
    Sender,
    caught_up,
    check_dlq,
    committed,
    shake,
    sql,
    wait_until,
)


@pytest.mark.parametrize("profile", PROFILES)
def test_adclicks_survive_repeated_kills(
    base_settings: Settings, redis_url: str, profile: Profile, chaos_setup: MakeSetup
) -> None:
    run = chaos_setup("adclicks", profile)
    report, topic, env = run.report, run.topic, run.env
    group = "clickflow-adclicks"
    env["CLICKFLOW_REDIS_URL"] = redis_url  # click_id claims
    proc = run.pipeline(["adclicks"])
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
    check_dlq(report, run.dead_letters(), broken)  # type: ignore[arg-type]
    run.record()

    assert (report.lost, report.duplicated) == (0, 0)
    per_ad = {r["ad_id"]: int(r["n"]) for r in minute}
    assert per_ad == dict(Counter(t["ad_id"] for t in stream.valid.values()))
    assert report.dlq_got == report.dlq_expected == stream.broken
