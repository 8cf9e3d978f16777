"""One gRPC server (``settings.grpc_port``) for every domain that has gRPC services.

The convention (see ``clickflow.domains``): ``domains/<d>/grpc_server.py`` has
``register(server, settings) -> bool``, which adds the domain's servicers to the shared server
and says whether it did (a domain may need a store these settings do not configure).
``clickflow serve`` starts the server when at least one domain registered something.
A domain's ``SERVICE_NAMES`` (full service names) are announced by the standard health service
(``grpc.health.v1.Health``, for load balancers and ``grpc_health_probe``) and by server
reflection (``grpcurl list`` without the .proto files); neither needs a token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.grpc")


def new_server() -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"))


class ServingServer:
    """A started server and its health service: ``stop`` says NOT_SERVING first."""

    def __init__(self, server: grpc.Server, health: health.HealthServicer) -> None:
        self.server = server
        self.health = health

    def stop(self, grace: float | None) -> threading.Event:
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace)


def listen(
    server: grpc.Server, settings: Settings, port: int | None = None, services: Iterable[str] = ()
) -> ServingServer:
    """Add health and reflection for ``services``, bind ``settings.host:settings.grpc_port``
    (or ``port``) and start serving."""
    names = list(services)
    checks = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for name in ["", *names]:  # "" is the whole server
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{port or settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address} for gRPC: is the port busy?")
    server.start()
    log.info("grpc started", extra=log_fields(address=address))
    return ServingServer(server, checks)


def start_domain_services(
    settings: Settings, domains: list[str] = DOMAINS, port: int | None = None
) -> ServingServer | None:
    """The shared server with every domain's services, started; None when no domain has any."""
    server = new_server()
    registered: list[str] = []
    names: list[str] = []
    for domain in domains:
        module = domain_module(domain, "grpc_server")
        if module is not None and module.register(server, settings):
            registered.append(domain)
            names += getattr(module, "SERVICE_NAMES", ())
    if not registered:
        return None
    serving = listen(server, settings, port, names)
    log.info("grpc services", extra=log_fields(domains=",".join(registered)))
    return serving
