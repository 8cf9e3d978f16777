"""Fault injection for the chaos suite: pipeline processes to SIGKILL, stores to stop and
restart, Kafka read-backs, and the results table.

Every pipeline runs as ``python -m clickflow process <name>`` in its own process group, with
its own chDB directory (the pytest process owns another one), and talks to Redis and
PostgreSQL servers started here, so stopping them does not disturb the rest of the session.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clickflow.config import Settings
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import dlq_topic
from tests.processes import wait_catches


@dataclass(frozen=True)
class Profile:
    """How hard to shake a pipeline: the short run is part of `make test`, the long one of
    `make chaos`."""

    name: str
    events: int
    rate: float  # events/s while the faults happen
    kills: int  # SIGKILLs of the consumer process
    outages: int  # store stop/restart cycles (each store of the pipeline in turn)
    outage_seconds: float
    collector_restarts: int = 0


SHORT = Profile("short", events=1000, rate=150, kills=1, outages=1, outage_seconds=1.0)
LONG = Profile(
    "long", events=40_000, rate=700, kills=5, outages=3, outage_seconds=3.0, collector_restarts=3
)

#: every chaos test runs both: the short one in `make test`, the long one in `make chaos`
PROFILES = [
    pytest.param(SHORT, marks=pytest.mark.slow, id="short"),
    pytest.param(LONG, marks=pytest.mark.chaos, id="long"),
]


@dataclass
class Report:
    pipeline: str
    profile: str
    faults: Counter = field(default_factory=Counter)
    sent: int = 0
    valid: int = 0
    lost: int = 0
    duplicated: int = 0
    dlq_expected: int = 0
    dlq_got: int = 0  # distinct source records in the DLQ
    dlq_copies: int = 0  # extra copies of a dead letter (a replayed batch re-sends them)
    seconds: float = 0.0
    timeline: list = field(default_factory=list)  # (seconds since start, fault)

    def faults_text(self) -> str:
        return ", ".join(f"{n}x {k}" for k, n in sorted(self.faults.items())) or "none"


RESULTS: list[Report] = []


def render_table(reports: list[Report]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chaos: every pipeline against its ground truth")
    for col in ("pipeline", "run", "faults injected", "events sent", "valid", "lost"):
        table.add_column(col, justify="left" if col in ("pipeline", "faults injected") else "right")
    for col in ("duplicated", "DLQ expected", "DLQ held", "DLQ re-sent copies", "seconds"):
        table.add_column(col, justify="right")
    for r in reports:
        table.add_row(
            r.pipeline,
            r.profile,
            r.faults_text(),
            str(r.sent),
            str(r.valid),
            str(r.lost),
            str(r.duplicated),
            str(r.dlq_expected),
            str(r.dlq_got),
            str(r.dlq_copies),
            f"{r.seconds:.0f}",
        )
    console = Console(width=170, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


# -- processes -----------------------------------------------------------------------------


def stop_group(proc: subprocess.Popen, sig: int, timeout: float = 20) -> int | None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


class PipelineProcess:
    """`clickflow process <names>` that can be started, SIGKILLed and stopped again."""

    def __init__(self, names: list[str], env: dict[str, str], log: Path, *flags: str) -> None:
        self.cmd = [sys.executable, "-m", "clickflow", "process", *names]
        self.cmd += ["--records", "300", "--seconds", "0.2", *flags]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=out, stderr=out, start_new_session=True
        )
        out.close()
        wait_catches(self.proc, signal.SIGTERM)  # so that stop() stops it cleanly

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        assert self.alive(), f"the pipeline process died:\n{self.tail()}"

    def kill(self) -> None:
        assert self.proc is not None
        stop_group(self.proc, signal.SIGKILL)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        return stop_group(self.proc, signal.SIGTERM, timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def base_env(settings: Settings, data: Path) -> dict[str, str]:
    data.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "CLICKFLOW_DATA_DIR": str(data),
        "CLICKFLOW_CLICKHOUSE_DSN": f"chdb:///{data / 'clickhouse'}",
        "CLICKFLOW_CLICKHOUSE_DATABASE": "clickflow",
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_LOG_LEVEL": "WARNING",
        # A SIGKILLed member leaves the group after the session timeout: keep it short.
        "CLICKFLOW_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "TMPDIR": str(data),
    }


READ_BACK = """
import sys, orjson
from clickflow.config import Settings
from clickflow.stores.clickhouse import clickhouse_client
ch = clickhouse_client(Settings())
exec(sys.argv[1])
out = []
for q in orjson.loads(sys.stdin.buffer.read()):
    r = ch.query(q)
    out.append([dict(zip(r.column_names, row)) for row in r.result_rows])
sys.stdout.buffer.write(orjson.dumps(out, default=str))
"""


def sql(env: dict[str, str], *queries: str, prelude: str = "") -> list[list[dict]]:
    """Run ClickHouse queries in one subprocess on the pipeline's chDB (after it stopped:
    chDB allows one process per data directory); the rows of each query, as dicts.
    ``prelude``: Python run in that process first (e.g. a domain's maintenance step)."""
    out = subprocess.run(
        [sys.executable, "-c", READ_BACK, prelude],
        env=env,
        input=orjson.dumps(list(queries)),
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return orjson.loads(out.stdout)


# -- stores that can be stopped ------------------------------------------------------------


class RedisServer:
    """An embedded Redis on a Unix socket; a restart comes back on the same socket with its
    data (append-only file, flushed on the graceful stop)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        from clickflow.runtime.redis_server import start_redis

        self.proc, self.url = start_redis(self.dir)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM)
            self.proc = None


class PostgresServer:
    """An embedded PostgreSQL of its own (outside pytest's tmp dir: the server runs as
    another OS user when we are root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="clickflow-chaos-pg-"))
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        from clickflow.runtime.postgres_server import start_postgres

        self.proc, self.url = start_postgres(self.root / "data")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT)  # fast shutdown: aborts open transactions
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- Kafka ----------------------------------------------------------------------------------


class Sender(threading.Thread):
    """Sends ``(key, value, partition or None)`` records at ``rate`` per second and remembers
    where each one landed (its partition and offset)."""

    def __init__(self, settings: Settings, topic: str, records: list, rate: float) -> None:
        super().__init__(daemon=True)
        self.producer = EventProducer(producer_config(settings))
        self.topic, self.records, self.rate = topic, records, rate
        self.landed: list[tuple[int, int] | None] = [None] * len(records)
        self.errors: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        for i, (key, value, part) in enumerate(self.records):

            def done(err, msg, i: int = i) -> None:
                if err is not None:
                    self.errors.append(str(err))
                else:
                    self.landed[i] = (msg.partition(), msg.offset())

            self.producer.send(self.topic, value, key=key, partition=part, on_delivery=done)
            if i % 100 == 99:
                self.producer.poll(0)
                ahead = (i + 1) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if self.producer.flush(30):
            self.errors.append("records not acknowledged")

    def ends(self) -> dict[int, int]:
        """Per partition: the last acknowledged offset + 1."""
        out: dict[int, int] = {}
        for p, o in filter(None, self.landed):
            out[p] = max(out.get(p, 0), o + 1)
        return out

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive() and not self.errors, self.errors[:3]


def committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(consumer_config(settings, group))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return {tp.partition: max(tp.offset, 0) for tp in tps}


def caught_up(
    settings: Settings, groups: list[str], topic: str, ends: dict[int, int], partitions: int
) -> bool:
    for g in groups:
        got = committed(settings, g, topic, partitions)
        if any(got.get(p, 0) < end for p, end in ends.items()):
            return False
    return True


def read_topic(settings: Settings, topic: str, partitions: int, idle: float = 1.0) -> list:
    """Every record of ``topic`` (until nothing new arrived for ``idle`` seconds)."""
    # Short fetch waits: "nothing new for ``idle`` seconds" must not be a fetch the broker
    # held (the pipelines let it hold an empty fetch 500 ms; right after a broker restart
    # tansu holds the first ones that long even when records are there).
    conf = consumer_config(
        settings, f"chaos-read-{random.getrandbits(40):x}", **{"fetch.wait.max.ms": 50}
    )
    c = Consumer(conf)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out = []
        last = time.monotonic()
        while time.monotonic() - last < idle:
            msgs = [m for m in c.consume(5000, 0.2) if m.error() is None]
            if msgs:
                out += msgs
                last = time.monotonic()
        return out
    finally:
        c.close()


def dlq_sources(settings: Settings, dlq: str, partitions: int) -> Counter:
    """(source partition, source offset) of every dead letter, with how often it is there."""
    found: Counter = Counter()
    for m in read_topic(settings, dlq, partitions):
        h = dict(m.headers() or [])
        found[(int(h["dlq.partition"]), int(h["dlq.offset"]))] += 1
    return found


def check_dlq(report: Report, found: Counter, expected: set[tuple[int, int]]) -> None:
    report.dlq_expected = len(expected)
    report.dlq_got = len(found)
    report.dlq_copies = sum(found.values()) - len(found)


# -- the fault loop ------------------------------------------------------------------------


@dataclass
class Store:
    name: str
    stop: Callable[[], None]
    start: Callable[[], None]


def shake(
    proc: PipelineProcess,
    profile: Profile,
    report: Report,
    progress: Callable[[], int],
    stores: list[Store],
    rng: random.Random,
    extra: list[tuple[str, Callable[[], None]]] | None = None,
) -> None:
    """Inject the profile's faults into a running pipeline while traffic flows.

    ``progress()`` returns the records committed so far: each fault waits until the pipeline
    made progress since the previous one (so it hits a working consumer, mid-stream), or
    15 s when there is nothing left to consume."""
    faults: list[str] = ["kill"] * profile.kills + ["outage"] * profile.outages
    faults += ["extra"] * (len(extra or []) and profile.collector_restarts)
    rng.shuffle(faults)
    t0 = time.monotonic()
    outage_no = 0
    extra_no = 0
    proc.start()
    for fault in faults:
        before = progress()
        deadline = time.monotonic() + 15  # then the stream is over: inject the fault anyway
        while progress() <= before and time.monotonic() < deadline:
            proc.check()
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next batch
        if fault == "kill":
            proc.kill()
            report.faults["consumer SIGKILL"] += 1
            proc.start()
        elif fault == "outage" and stores:
            store = stores[outage_no % len(stores)]
            outage_no += 1
            store.stop()
            time.sleep(profile.outage_seconds)
            proc.check()
            store.start()
            report.faults[f"{store.name} down {profile.outage_seconds:g}s"] += 1
        elif fault == "extra" and extra:
            name, fn = extra[extra_no % len(extra)]
            extra_no += 1
            fn()
            report.faults[name] += 1
        report.timeline.append((round(time.monotonic() - t0, 1), fault))


def wait_until(cond: Callable[[], bool], proc: PipelineProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        proc.check()
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{proc.tail()}"
        time.sleep(0.2)


# -- one pipeline's set-up (see the chaos_setup fixture) ---------------------------------


@dataclass
class ChaosSetup:
    """One pipeline under fire: its topic and DLQ (created), the environment of its
    processes, the servers it needs. Everything started through it is stopped at teardown,
    whatever the test did."""

    settings: Settings
    report: Report
    topic: str
    partitions: int
    env: dict[str, str]
    tmp: Path
    started: float = field(default_factory=time.monotonic)
    _stops: list[Callable[[], object]] = field(default_factory=list)

    @property
    def dlq(self) -> str:
        return dlq_topic(self.topic)

    def redis(self) -> RedisServer:
        """A Redis that can be stopped and restarted; the pipeline's environment points at it."""
        server = RedisServer(self.tmp)
        self._stops.append(server.stop)
        server.start()
        self.env["CLICKFLOW_REDIS_URL"] = server.url
        return server

    def postgres(self) -> PostgresServer:
        server = PostgresServer()
        self._stops.append(server.remove)
        server.start()
        self.env["CLICKFLOW_POSTGRES_URL"] = server.url
        return server

    def pipeline(self, names: list[str], *flags: str) -> PipelineProcess:
        proc = PipelineProcess(names, self.env, self.tmp / "process.log", *flags)
        self._stops.append(proc.stop)
        return proc

    def dead_letters(self) -> Counter:
        return dlq_sources(self.settings, self.dlq, self.partitions)

    def record(self) -> None:
        """Adds the report (with its duration) to the session's chaos table."""
        self.report.seconds = time.monotonic() - self.started
        RESULTS.append(self.report)

    def close(self) -> None:
        for stop in reversed(self._stops):
            stop()


MakeSetup = Callable[..., ChaosSetup]  # the chaos_setup fixture
