"""Environment for running `clickflow up` in a test: free ports and a private data dir."""

from __future__ import annotations

import os
from pathlib import Path

from clickflow.runtime.ports import free_port, port_is_free

SERVICES = ("api", "collector", "generator", "auth", "grpc", "kafka", "sql")


def free_pair() -> int:
    """A free port whose next one is free too: `up` gives its two processes base and base+1."""
    while True:
        port = free_port()
        if port < 65535 and port_is_free("127.0.0.1", port + 1):
            return port


def up_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    ports = {name: free_port() for name in SERVICES}
    ports["process"] = free_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKFLOW_")}
    env.update(
        {
            "CLICKFLOW_DATA_DIR": str(tmp_path / "data"),
            "CLICKFLOW_API_PORT": str(ports["api"]),
            "CLICKFLOW_COLLECTOR_PORT": str(ports["collector"]),
            "CLICKFLOW_GENERATOR_PORT": str(ports["generator"]),
            "CLICKFLOW_AUTH_PORT": str(ports["auth"]),
            "CLICKFLOW_GRPC_PORT": str(ports["grpc"]),
            "CLICKFLOW_SQL_PORT": str(ports["sql"]),
            "CLICKFLOW_KAFKA_EMBEDDED_PORT": str(ports["kafka"]),
            "CLICKFLOW_PROCESS_PORT": str(ports["process"]),
            # The tests run beside others on 2 cores: starting can take minutes there.
            "CLICKFLOW_UP_READY_TIMEOUT_S": "240",
        }
    )
    return env, ports
