"""`clickflow process`'s own HTTP endpoint: /healthz, /metrics and /debug/profile.

It runs on a thread beside the pipelines, on ``CLICKFLOW_PROCESS_PORT`` (8010 by default;
`clickflow up` gives each process its own). A port set explicitly must be free (the start
fails with one clear line); when the default is taken, e.g. by a second `process` started by
hand, an ephemeral port is used instead and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from clickflow.config import Settings
from clickflow.health import Check, health_router
from clickflow.logs import log_fields
from clickflow.runtime.exceptions import RuntimeStartError
from clickflow.runtime.ports import free_port, port_is_free, require_free

log = logging.getLogger("clickflow.process")


def create_process_app(settings: Settings, names: list[str], checks: dict[str, Check]) -> FastAPI:
    app = FastAPI(
        title="clickflow process",
        version="0.1.0",
        description=f"Health and metrics of the pipelines {', '.join(names)}.",
    )
    app.state.settings = settings
    app.include_router(health_router("process", checks))
    return app


@dataclass
class ProcessHttp:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self, wait: bool = True) -> None:
        self.server.should_exit = True
        if wait:
            self.thread.join(timeout=5)


def choose_port(host: str, port: int, explicit: bool) -> int:
    """``port`` when free; else fail if it was configured, or take an ephemeral one."""
    if explicit:
        require_free(host, port, "`process`", "CLICKFLOW_PROCESS_PORT")
        return port
    return port if port_is_free(host, port) else free_port(host)


def start_process_http(
    settings: Settings, names: list[str], checks: dict[str, Check], timeout: float = 30.0
) -> ProcessHttp:
    explicit = "process_port" in settings.model_fields_set
    port = choose_port(settings.host, settings.process_port, explicit)
    config = uvicorn.Config(
        create_process_app(settings, names, checks),
        host=settings.host,
        port=port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="process-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeStartError(f"`process` could not serve HTTP on {settings.host}:{port}")
        time.sleep(0.05)
    log.info(
        "health and metrics",
        extra=log_fields(url=f"http://{settings.host}:{port}", pipelines=names),
    )
    return ProcessHttp(server, thread, port)
