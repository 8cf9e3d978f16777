"""Start, watch and stop child processes: what `clickflow up` is made of.

Children run in their own process groups; on Ctrl-C/SIGTERM each group gets SIGTERM, then
SIGKILL after a grace period, so nothing is left behind. A child that dies is restarted with
backoff (a crashed consumer must come back: it resumes from its committed offsets).

A child with a ``health_url`` is also restarted when its own work stays stuck: its /healthz
answers 503 with a ``pipeline:*`` check not "ok" (a pipeline stalled with records pending,
or dead) for ``unhealthy_after`` seconds, or it stops answering after it once did. A red
dependency alone (Kafka or a store down) does not restart it: that would not help.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from clickflow.logs import log_fields

log = logging.getLogger("clickflow.supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    health_url: str | None = None  # e.g. http://127.0.0.1:8010/healthz
    health_restarts: int = 0
    started_at: float = 0.0
    answered: bool = False  # its /healthz answered since it started
    red_since: float | None = None
    next_probe: float = 0.0


@dataclass
class Supervisor:
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    externals: list[tuple[str, subprocess.Popen, int]] = field(default_factory=list)
    stopping: bool = False
    #: Seconds between /healthz probes. Each probe of `serve` checks every store (a new
    #: PostgreSQL backend, a Kafka admin client): 10 s keeps that off an idle stack's bill
    #: and still restarts a child red for ``unhealthy_after`` within one more interval.
    health_interval: float = 10.0
    unhealthy_after: float = 60.0
    #: Seconds a child may take to answer its first /healthz before silence counts as red.
    start_grace: float = 120.0
    #: One client for every probe: `httpx.get` builds a TLS context each call (~20 ms of CPU),
    #: which made the probes alone cost an idle stack 1.3% of a core. No kept-alive
    #: connections: a probe every few seconds would race the server closing its idle ones.
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(
            timeout=5, limits=httpx.Limits(max_keepalive_connections=0)
        )
    )

    def adopt(self, name: str, proc: subprocess.Popen, stop_signal: int = signal.SIGTERM) -> None:
        """Track an already started process (embedded servers) so it is stopped with us.

        Embedded servers are stopped last, after the services that use them."""
        self.externals.append((name, proc, stop_signal))

    def spawn(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{child.name}.log", "ab")
        env = {**os.environ, **child.env}
        child.proc = subprocess.Popen(
            child.argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        child.started_at = child.next_probe = time.monotonic()
        child.answered, child.red_since = False, None
        log.info("started", extra=log_fields(service=child.name, pid=child.proc.pid))

    def add(self, child: Child) -> None:
        self.children.append(child)
        self.spawn(child)

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                if child.proc is None and now >= child.next_start:
                    self.spawn(child)
                elif child.proc is not None and child.health_url and now >= child.next_probe:
                    child.next_probe = now + self.health_interval
                    self._probe(child, now)
                continue
            code = child.proc.returncode
            child.proc = None
            if not child.restart or self.stopping:
                continue
            child.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
            child.next_start = now + delay
            log.warning(
                "child exited; restarting",
                extra=log_fields(service=child.name, code=code, restart_in_s=delay),
            )
        for name, proc, _sig in self.externals:
            if proc.poll() is not None and not self.stopping:
                raise SystemExit(f"clickflow: embedded {name} exited (code {proc.returncode})")

    def _probe(self, child: Child, now: float) -> None:
        """Restart ``child`` (a SIGTERM, then SIGKILL) once its health stayed red too long."""
        assert child.health_url is not None and child.proc is not None
        why = _own_health_problem(self.http, child.health_url)
        if why is None:
            child.answered, child.red_since = True, None
            return
        if (
            why == "unreachable"
            and not child.answered
            and now - child.started_at < self.start_grace
        ):
            return
        if child.red_since is None:
            child.red_since = now
            log.warning("child unhealthy", extra=log_fields(service=child.name, reason=why))
        if now - child.red_since < self.unhealthy_after:
            return
        child.health_restarts += 1
        log.error(
            "child unhealthy too long; restarting it",
            extra=log_fields(
                service=child.name,
                reason=why,
                red_for_s=round(now - child.red_since, 1),
                health_restarts=child.health_restarts,
            ),
        )
        proc = child.proc
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        # check() sees the exit and restarts it with the usual backoff.

    def run_forever(self) -> None:
        def _stop(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        try:
            while True:
                self.check()
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        services = [(c.name, c.proc, signal.SIGTERM) for c in reversed(self.children) if c.proc]
        self._stop_all(services, grace)
        self._stop_all(list(reversed(self.externals)), grace)
        self.http.close()
        print("clickflow: all services stopped", file=sys.stderr)

    def _stop_all(self, procs: list[tuple[str, subprocess.Popen, int]], grace: float) -> None:
        for _name, proc, sig in procs:
            _signal_group(proc, sig)
        deadline = time.monotonic() + grace
        for name, proc, _sig in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("killing", extra=log_fields(service=name))
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _own_health_problem(http: httpx.Client, url: str) -> str | None:
    """None when healthy; else why: "unreachable" or the failing ``pipeline:*`` checks."""
    try:
        r = http.get(url)
    except httpx.HTTPError:
        return "unreachable"
    if r.status_code == 200:
        return None
    try:
        deps = r.json().get("dependencies", {})
    except ValueError:
        return f"HTTP {r.status_code}"
    own = {k: v for k, v in deps.items() if k.startswith("pipeline:") and v != "ok"}
    return "; ".join(f"{k}: {v}" for k, v in own.items()) or None
