"""Several generator processes (``--workers N``) against the real broker: every event exactly
once in one ground-truth file, the mix and the rate kept, controls reaching every worker,
clean stops, and a dead worker reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient

from clickflow.config import Settings
from clickflow.domains.pageviews.events import event_identity
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.generator.control import create_control_app
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import read_truth
from clickflow.generator.workers import WorkerPool
from clickflow.kafka.config import consumer_config
from tests.processes import spawn, stop_tree


def pool_for(
    settings: Settings, topic: str, rate: float, truth: Path | None = None, **opts
) -> WorkerPool:
    return WorkerPool(
        settings,
        PageViewFactory(topic=topic, pages=50),
        "pageviews",
        2,
        RateModel(mode="fixed", rate=rate),
        Mix(0.05, 0.01),
        GeneratorOptions(**opts),
        truth,
    )


def on_broker(bootstrap: str, topic: str, wanted: set[tuple[int, int]]) -> dict:
    """(partition, offset) -> identity of the record there, for every wanted coordinate."""
    c = Consumer(consumer_config(Settings(kafka_bootstrap=bootstrap), f"rb-{topic}-{time.time()}"))
    c.subscribe([topic])
    found: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + 120  # generous: a busy machine
    while not wanted <= found.keys() and time.monotonic() < deadline:
        for m in c.consume(5000, 0.5):
            if m.error() is None:
                found[(m.partition(), m.offset())] = event_identity(m.value())
    c.close()
    return found


def generated_per_worker(pool: WorkerPool) -> list[tuple[int, int]]:
    """(generated, broken) of each worker, from its latest report."""
    return [(r.stats.generated, r.stats.broken) if r else (0, 0) for r in pool.reports]


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_workers_send_every_event_exactly_once(
    settings: Settings, topic: str, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    count = 30_001  # odd: the shares are 15,001 and 15,000
    pool = pool_for(settings, topic, 1_000_000, truth, seed=5)
    stats = pool.run(count=count)
    pool.close()
    assert pool.failure is None
    assert [r.stats.generated for r in pool.reports if r] == [15_001, 15_000]
    assert stats.sent == stats.acked == stats.generated == count and stats.failed == 0
    assert list(tmp_path.iterdir()) == [truth]  # the parts were merged and removed

    lines = read_truth(truth)
    assert len(lines) == count
    coords = [(x["partition"], x["offset"]) for x in lines]
    assert len(set(coords)) == count
    broker = on_broker(settings.kafka_bootstrap, topic, set(coords))
    assert broker.keys() == set(coords)  # nothing missing, nothing extra
    assert all(broker[c] == x["id"] for c, x in zip(coords, lines, strict=True))

    # Each worker has its own seed: no valid event is made twice except the deliberate
    # duplicates (broken ones may coincide: a malformed record is a short prefix).
    originals = Counter(x["id"] for x in lines if not x["dup"] and not x["broken"])
    assert max(originals.values()) == 1
    dups = [x for x in lines if x["dup"]]
    assert len(dups) == stats.duplicates and all(x["id"] in originals for x in dups)
    broken = sum(1 for x in lines if x["broken"])
    assert broken == stats.broken
    # Binomial tolerance on 30k events: ~4 standard deviations.
    assert abs(broken / count - 0.05) < 0.005
    assert abs(len(dups) / count - 0.01) < 0.0025


def test_fixed_rate_with_two_workers_is_met_within_5_percent(
    settings: Settings, topic: str
) -> None:
    pool = pool_for(settings, topic, 6000)
    seconds = 3.0
    stats = pool.run(duration=seconds)
    pool.close()
    assert pool.failure is None
    achieved = stats.generated / seconds  # each worker ran for exactly `seconds`
    assert abs(achieved - 6000) / 6000 < 0.05, achieved
    for generated, _ in generated_per_worker(pool):  # each worker made its half
        assert abs(generated / seconds - 3000) / 3000 < 0.05, generated


def test_control_changes_reach_every_worker(settings: Settings, topic: str) -> None:
    pool = pool_for(settings, topic, 2000)
    runner = threading.Thread(target=pool.run, kwargs={"duration": 60}, daemon=True)
    runner.start()
    client = TestClient(create_control_app({"pageviews": pool}))
    try:
        wait_until(lambda: all(r and r.stats.generated > 0 for r in pool.reports))

        r = client.post("/control", json={"rate": 8000, "mix": {"broken_share": 0.5}})
        assert r.status_code == 200
        state = r.json()["pageviews"]
        assert state["rate"] == 8000 and state["workers"] == 2
        assert state["mix"] == {"broken_share": 0.5, "duplicate_share": 0.01}
        time.sleep(0.5)  # every worker reads its pipe within 0.1 s
        before = generated_per_worker(pool)
        time.sleep(2.0)
        after = generated_per_worker(pool)
        for (n0, b0), (n1, b1) in zip(before, after, strict=True):
            per_second = (n1 - n0) / 2.0
            assert 3000 < per_second < 5000, per_second  # 8000 split in two
            assert abs((b1 - b0) / (n1 - n0) - 0.5) < 0.05  # the new mix

        for bad in ({"rate": -1}, {"mode": "turbo"}, {"mix": {"broken_share": 0.995}}):
            assert 400 <= client.post("/control", json=bad).status_code < 500
        assert client.get("/control").json()["pageviews"]["rate"] == 8000
    finally:
        pool.stop()
        runner.join(60)
    assert not runner.is_alive() and pool.failure is None
    assert pool.stats.acked == pool.stats.sent > 0
    # /metrics exports the sum of the workers' counters.
    acked = [
        float(line.split()[-1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith('clickflow_generator_acked_total{domain="pageviews"}')
    ]
    assert pool.stats.acked in acked
    pool.close()


def test_a_worker_that_dies_fails_the_pool_and_the_others_stop_cleanly(
    settings: Settings, topic: str
) -> None:
    pool = pool_for(settings, topic, 2000)
    runner = threading.Thread(target=pool.run, kwargs={"duration": 60}, daemon=True)
    runner.start()
    wait_until(lambda: all(r and r.stats.generated > 0 for r in pool.reports))
    victim = pool.pids[1]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    runner.join(30)
    pool.close()
    assert not runner.is_alive()
    assert pool.failure is not None
    assert f"worker 1 (pid {victim}) died with exit code -9" in pool.failure
    survivor = pool.reports[0]
    assert survivor is not None and survivor.done and survivor.error is None
    assert survivor.stats.acked == survivor.stats.sent > 0  # flushed before exiting


def cli(bootstrap: str, topic: str, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "CLICKFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "CLICKFLOW_PAGEVIEWS_TOPIC": topic,
        "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
    }
    return spawn(
        [sys.executable, "-m", "clickflow", "generate", "--domain", "pageviews"]
        + ["--workers", "2", "--mode", "fixed", "--no-control", "--quiet", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _output(proc: subprocess.Popen) -> str:
    """The CLI's output once it exited; it and its workers are killed if it hangs."""
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        stop_tree(proc, signal.SIGKILL, timeout=5)
    return out


def summary(output: str) -> dict[str, float]:
    """The counters of the final ``pageviews: sent=... acked=...`` line."""
    text = " ".join(output.split())
    fields = text[text.index("pageviews: sent=") + len("pageviews: ") :].split()
    return {k: float(v) for k, v in (f.split("=") for f in fields if "=" in f)}


def test_cli_with_two_workers_runs_end_to_end(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    args = ["--rate", "20000", "--count", "6000", "--truth", str(truth)]
    proc = cli(kafka_bootstrap, topic, tmp_path, *args)
    out = _output(proc)
    assert proc.returncode == 0, out
    s = summary(out)
    assert s["sent"] == s["acked"] == 6000 and s["failed"] == 0
    lines = read_truth(truth)
    assert len(lines) == 6000 and sum(x["dup"] for x in lines) == s["duplicates"]
    broker = on_broker(kafka_bootstrap, topic, {(x["partition"], x["offset"]) for x in lines})
    assert all(broker.get((x["partition"], x["offset"])) == x["id"] for x in lines)


@pytest.mark.parametrize("kill", ["parent-sigterm", "worker-sigkill"])
def test_cli_stops_cleanly_on_sigterm_and_fails_loudly_when_a_worker_dies(
    kafka_bootstrap: str, topic: str, tmp_path: Path, kill: str
) -> None:
    truth = tmp_path / "truth.jsonl"
    proc = cli(kafka_bootstrap, topic, tmp_path, "--rate", "4000", "--truth", str(truth))
    wait_until(lambda: all(p.exists() and p.stat().st_size > 0 for p in parts(truth)))
    if kill == "parent-sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(max(workers_of(proc.pid)), signal.SIGKILL)
    out = _output(proc)
    s = summary(out)
    if kill == "parent-sigterm":
        assert proc.returncode == 0, out
        assert s["sent"] == s["acked"] > 0 and s["failed"] == 0
        assert len(read_truth(truth)) == s["acked"]  # every acknowledged event is in the truth
    else:
        assert proc.returncode == 1, out
        assert "died with exit code -9" in " ".join(out.split())
    assert not any(p.exists() for p in parts(truth))


def parts(truth: Path) -> list[Path]:
    return [truth.with_name(f"{truth.name}.part-{k}") for k in range(2)]


def workers_of(pid: int) -> list[int]:
    """The generator worker processes among ``pid``'s children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(entry))
    return out


def test_an_engine_that_fails_makes_the_command_fail(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process (--workers 1): an error inside the engine's run is reported, exit 1."""
    from typer.testing import CliRunner

    from clickflow.cli import app
    from clickflow.generator.engine import Engine

    def run_out_of_disk(self: Engine, **_kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Engine, "run", run_out_of_disk)
    monkeypatch.setenv("CLICKFLOW_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CLICKFLOW_DATA_DIR", str(tmp_path / "data"))
    args = ["generate", "--domain", "pageviews", "--no-control", "--quiet", "--count", "10"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
