"""One gRPC server (``settings.grpc_port``) for every domain that has gRPC services.

The convention (see ``clickflow.domains``): ``domains/<d>/grpc_server.py`` has
``register(server, settings) -> bool``, which adds the domain's servicers to the shared server
and says whether it did (a domain may need a store these settings do not configure).
``clickflow serve`` starts the server when at least one domain registered something.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.grpc")


def new_server() -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"))


def listen(server: grpc.Server, settings: Settings, port: int | None = None) -> None:
    """Bind ``settings.host:settings.grpc_port`` (or ``port``) and start serving."""
    address = f"{settings.host}:{port or settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address} for gRPC: is the port busy?")
    server.start()
    log.info("grpc started", extra=log_fields(address=address))


def start_domain_services(
    settings: Settings, domains: list[str] = DOMAINS, port: int | None = None
) -> grpc.Server | None:
    """The shared server with every domain's services, started; None when no domain has any."""
    server = new_server()
    registered = []
    for domain in domains:
        module = domain_module(domain, "grpc_server")
        if module is not None and module.register(server, settings):
            registered.append(domain)
    if not registered:
        return None
    listen(server, settings, port)
    log.info("grpc services", extra=log_fields(domains=",".join(registered)))
    return server
