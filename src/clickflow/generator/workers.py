"""Several engine processes for one domain: ``clickflow generate --workers N``.

One Python process makes and produces ~135k events/s at most: the event factory and the
delivery callbacks share one GIL. A ``WorkerPool`` starts N worker processes; each runs its
own ``Engine`` with its own producer, its own RNG seed (``seed + K``), 1/N of the traffic
(``RateModel.share``) and its share of ``count``. The pool, in the parent:

* forwards control changes (mode, rate, schedule, mix, stop) to every worker over a pipe;
  a worker reads its pipe between batches, every ``TICK`` seconds;
* sums the workers' reports (counters, ack-latency histogram) for the live line, the final
  summary and ``/metrics``;
* writes ONE ground-truth file: worker K writes ``FILE.part-K``, the pool concatenates the
  parts in worker order at the end and removes them;
* turns a worker that died or raised into ``failure``, stops the others (each flushes what
  it sent), and the CLI exits non-zero with that message.

Workers are started with the "spawn" method: librdkafka's threads do not survive a fork.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from clickflow.config import Settings
from clickflow.generator.controls import Command, GeneratorControls
from clickflow.generator.engine import Engine
from clickflow.generator.factory import EventFactory
from clickflow.generator.metrics import LATENCY_BUCKETS, Stats, export_metrics, stop_exporting
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.generator.truth import truth_part
from clickflow.kafka.topics import ensure_topics

TICK = 0.1  # seconds between a worker's reports (and its look at the command pipe)


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its engine (pickled into the new process)."""

    index: int
    settings: Settings
    factory: EventFactory
    domain: str
    rates: RateModel
    mix: Mix
    options: GeneratorOptions
    schedule: list[tuple[str, float]] | None
    truth_path: Path | None
    count: int | None
    duration: float | None


@dataclass
class WorkerReport:
    """A worker's counters: sent every TICK, and once more (``done``) after its final flush."""

    index: int
    stats: Stats
    mode: str
    latency_counts: list[int]
    latency_sum: float
    done: bool = False
    run_ended: float | None = None  # time.monotonic() when the run (with its flush) ended
    error: str | None = None  # the traceback, when the worker failed


class WorkerPool(GeneratorControls):
    """N worker processes generating one domain's traffic together, with the controls of an
    ``Engine`` (``GeneratorControls``; each change is forwarded to every worker) and its
    ``run`` and ``close``. ``failure`` says why a worker stopped early, if one did."""

    def __init__(
        self,
        settings: Settings,
        factory: EventFactory,
        domain: str,
        workers: int,
        rate_model: RateModel | None = None,
        mix: Mix | None = None,
        options: GeneratorOptions | None = None,
        truth_path: Path | None = None,
        schedule: list[tuple[str, float]] | None = None,
    ) -> None:
        if not 1 <= workers <= 64:
            raise ValueError("workers must be between 1 and 64")
        # rate_model is the whole traffic; each worker runs 1/N of it.
        super().__init__(domain, rate_model, mix, options, schedule)
        self.settings = settings
        self.factory = factory
        self.workers = workers
        self.truth_path = truth_path
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.reports: list[WorkerReport | None] = [None] * workers
        self.failure: str | None = None
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        # Once here, rather than N workers racing to create the topic.
        ensure_topics(settings.kafka_bootstrap, [factory.topic])
        export_metrics(self)

    # -- controls: GeneratorControls, forwarded to every worker --------------------------------

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids, once started."""
        with self._lock:
            return [proc.pid for proc in self._procs]

    @property
    def mode(self) -> str:
        """Under a schedule the workers switch modes themselves: report what they run."""
        first = self.reports[0]
        if self.schedule and first is not None:
            return first.mode
        return self.rates.mode

    def _state_extra(self) -> dict:
        return {"workers": self.workers}

    def _forward(self, command: Command) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):  # a dead worker is reported by run()
                    conn.send(command)

    # -- running -------------------------------------------------------------------------------

    def run(self, count: int | None = None, duration: float | None = None) -> Stats:
        """Start the workers and supervise them until every one has finished (``count``,
        ``duration`` or ``stop()``); returns the summed counters."""
        ctx = multiprocessing.get_context("spawn")
        with self._lock:
            specs = [self._spec(k, count, duration) for k in range(self.workers)]
        # A worker inherits this thread's signal mask: it starts with SIGINT/SIGTERM blocked
        # (a Ctrl-C while it imports would kill it with nothing flushed) and unblocks them
        # once its engine can stop cleanly. The resource tracker is started first because
        # starting it unblocks both signals in the calling thread.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for spec in specs:
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(spec, theirs),
                    name=f"clickflow-generate-{self.domain}-{spec.index}",
                    daemon=True,
                )
                proc.start()
                theirs.close()
                with self._lock:
                    self._conns.append(ours)
                    self._procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            self._supervise()
        finally:
            for proc in self._procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            self._assemble_truth()
        return self.stats

    def _spec(self, index: int, count: int | None, duration: float | None) -> WorkerSpec:
        n = self.workers
        return WorkerSpec(
            index=index,
            settings=self.settings,
            factory=self.factory,
            domain=self.domain,
            rates=dataclasses.replace(self.rates, share=self.rates.share / n),
            mix=self.mix,
            options=dataclasses.replace(self.options, seed=self.options.seed + index),
            schedule=self.schedule,
            truth_path=truth_part(self.truth_path, index) if self.truth_path else None,
            count=None if count is None else count // n + (index < count % n),
            duration=duration,
        )

    def _supervise(self) -> None:
        running = set(range(len(self._procs)))
        stop_sent = False
        while running:
            if not stop_sent and (self._stop.is_set() or self.failure):
                self._forward(("stop", None))
                stop_sent = True
            waitables: list[Any] = [self._conns[k] for k in running]
            wait(waitables + [self._procs[k].sentinel for k in running], timeout=TICK)
            for k in sorted(running):
                finished = self._receive(k)
                if not finished and not self._procs[k].is_alive():
                    finished = self._receive(k)  # its last report may have come just before
                    if not finished:
                        proc = self._procs[k]
                        self._fail(
                            f"generator worker {k} (pid {proc.pid}) died with exit code "
                            f"{proc.exitcode} before finishing"
                        )
                        finished = True
                if finished:
                    running.discard(k)
            self._sum_reports()

    def _receive(self, k: int) -> bool:
        """Read worker ``k``'s waiting reports; True once its final one arrived."""
        conn = self._conns[k]
        try:
            while conn.poll():
                report: WorkerReport = conn.recv()
                self.reports[k] = report
                if report.error:
                    self._fail(f"generator worker {k} failed:\n{report.error}")
                if report.done:
                    return True
        except (EOFError, OSError):
            pass  # its end is closed: it exited, is_alive() will say so
        return False

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message

    def _sum_reports(self) -> None:
        reports = [r for r in self.reports if r is not None]
        counts = [r.latency_counts for r in reports]
        with self._lock:
            self.stats = Stats.total([r.stats for r in reports])
            if counts:
                self.latency_counts = [sum(c) for c in zip(*counts, strict=True)]
            self.latency_sum = sum(r.latency_sum for r in reports)

    def elapsed(self) -> float:
        """Seconds from the first worker's start to the last worker's end (with its flush)."""
        ended = [r.run_ended for r in self.reports if r is not None and r.run_ended]
        if not ended:
            return 0.0
        return max(ended) - self.stats.started

    def _assemble_truth(self) -> None:
        if self.truth_path is None:
            return
        with open(self.truth_path, "wb") as out:
            for k in range(self.workers):
                part = truth_part(self.truth_path, k)
                if part.exists():
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
                    part.unlink()

    def close(self) -> None:
        stop_exporting(self)
        for conn in self._conns:
            conn.close()


# -- inside a worker process ---------------------------------------------------------------------


def _worker_main(spec: WorkerSpec, conn: Connection) -> None:
    engine: Engine | None = None
    try:
        engine = Engine(
            spec.settings,
            spec.factory,
            spec.domain,
            spec.rates,
            spec.mix,
            spec.options,
            spec.truth_path,
            spec.schedule,
        )
        _stop_on_signals(engine)

        def tick(e: Engine) -> None:
            try:
                while conn.poll():
                    e.apply(conn.recv())
                conn.send(_report(spec.index, e))
            except (EOFError, OSError):  # the parent is gone: stop and flush
                e.stop()

        engine.run(spec.count, spec.duration, on_tick=tick, tick_every=TICK)
        engine.close()
        conn.send(_report(spec.index, engine, done=True))
    except BaseException:
        with contextlib.suppress(OSError):
            if engine is not None:
                report = _report(spec.index, engine, done=True)
            else:
                no_latency = [0] * (len(LATENCY_BUCKETS) + 1)
                report = WorkerReport(spec.index, Stats(), "", no_latency, 0.0, done=True)
            report.error = traceback.format_exc()
            conn.send(report)
        raise SystemExit(1) from None


def _stop_on_signals(engine: Engine) -> None:
    """Ctrl-C reaches every process of the terminal's group: stop and flush, like the parent."""

    def stop(_sig: int, _frame: object) -> None:
        engine.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _report(index: int, engine: Engine, done: bool = False) -> WorkerReport:
    return WorkerReport(
        index=index,
        stats=engine.stats,
        mode=engine.mode,
        latency_counts=list(engine.latency_counts),
        latency_sum=engine.latency_sum,
        done=done,
        run_ended=time.monotonic() if done else None,
    )
