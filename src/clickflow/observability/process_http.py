"""`clickflow process`'s own HTTP endpoint: /healthz, /metrics and /debug/profile.

It runs on a thread beside the pipelines, on ``CLICKFLOW_PROCESS_PORT`` (8010 by default;
`clickflow up` gives each process its own). A port set explicitly must be free (the start
fails with one clear line); when the default is taken, e.g. by a second `process` started by
hand, an ephemeral port is used instead and logged. The socket is bound here and handed to
uvicorn, so two processes started at the same moment cannot both pick the default port and
leave one of them failing to bind.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from clickflow.config import Settings
from clickflow.health import Check, health_router
from clickflow.logs import log_fields
from clickflow.runtime.exceptions import PortBusyError, RuntimeStartError
from clickflow.runtime.http_server import QuietServer

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


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # with SO_REUSEADDR a racing bind succeeds and its listen fails
    except BaseException:
        sock.close()
        raise
    return sock


def listen_socket(host: str, port: int, explicit: bool) -> socket.socket:
    """A socket listening on ``port``; if that is taken, fail when it was configured, else
    listen on an ephemeral port (bound, not merely checked, so no other process can race us)."""
    try:
        return _listen(host, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        if explicit:
            raise PortBusyError(
                f"port {port} on {host} is busy, needed by `process`: stop whatever uses "
                "it or set CLICKFLOW_PROCESS_PORT to another port"
            ) from None
    return _listen(host, 0)


def start_process_http(
    settings: Settings, names: list[str], checks: dict[str, Check], timeout: float = 30.0
) -> ProcessHttp:
    explicit = "process_port" in settings.model_fields_set
    sock = listen_socket(settings.host, settings.process_port, explicit)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_process_app(settings, names, checks),
        host=settings.host,
        port=port,
        log_level="warning",
        access_log=False,
    )
    server = QuietServer(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="process-http", daemon=True
    )
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
