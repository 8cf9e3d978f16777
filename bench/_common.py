"""Shared bench plumbing: a private tansu broker and machine facts for the results."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from clickflow.benchmarks import cpu_description, load, today
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port


@contextmanager
def embedded_broker(log_dir: str = "/tmp/clickflow-bench") -> Iterator[str]:
    from pathlib import Path

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


def machine() -> str:
    return cpu_description()


load_average = load

__all__ = ["embedded_broker", "load_average", "machine", "today"]
