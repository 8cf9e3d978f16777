"""Benchmarks that ship with the `clickflow bench` command (storage study, results table).

The per-feature scripts live in ``bench/``; this package holds what the CLI itself runs.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

MACHINE = "2-core python-svc"


def machine() -> str:
    """The machine column of every results table, with the load average at this moment."""
    return f"{MACHINE}; {cpu_description()}, {load()}"


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


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")
