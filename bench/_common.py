"""Shared bench plumbing: a private tansu broker and machine facts for the results.

Every script in bench/ imports this with ``bench/`` on ``sys.path`` (it is there when a script
runs as ``python bench/<name>.py``).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port

MACHINE = "2-core python-svc"


@contextmanager
def embedded_broker(log_dir: str = "/tmp/clickflow-bench") -> Iterator[str]:
    port = free_port()
    proc = start_broker("127.0.0.1", port, Path(log_dir))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cpu_description() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def machine_with_load() -> str:
    """The machine column of the storage and peers tables, with the load average now."""
    return f"{MACHINE}; {cpu_description()}, {load()}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


machine = cpu_description
load_average = load

__all__ = [
    "cpu_description",
    "embedded_broker",
    "load",
    "load_average",
    "machine",
    "machine_with_load",
    "today",
]
