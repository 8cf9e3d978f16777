"""Event domains. Each is a package that owns its schema, SQL, pipeline, routes and traffic.

Conventions (all optional, discovered by name; the shells that use them name no domain):

* ``schema.sql``           ClickHouse DDL, idempotent, applied by the migration runner
* ``schema_postgres.sql``  PostgreSQL DDL, idempotent
* ``config.py``            the domain's settings: one pydantic ``BaseSettings`` read from
                           ``CLICKFLOW_<DOMAIN>_*``, validated up front
* ``pipeline.py``          ``PIPELINES: list[PipelineSpec]``
* ``api.py``               ``router: fastapi.APIRouter`` mounted by the query API
* ``collect.py``           what the HTTP collector takes for the domain: ``KINDS`` (event
                           kind -> the msgspec Struct of its ``data``), ``topic()`` (a
                           ``TopicSpec``) and ``record(kind, event_id, user_id, timestamp_ms,
                           data)`` (the Struct published); one domain per collector
* ``grpc_server.py``       ``register(server, settings) -> bool``: adds the domain's gRPC
                           services to the one server of ``clickflow serve``
* ``traffic.py``           an event factory for the generator
* ``cli.py``               ``app: typer.Typer`` mounted as ``clickflow <domain> ...``
"""

from __future__ import annotations

import importlib
from importlib import resources
from types import ModuleType

DOMAINS = ["pageviews", "ugc", "adclicks", "telecom"]


def domain_module(domain: str, part: str) -> ModuleType | None:
    """Import ``clickflow.domains.<domain>.<part>`` or return None if it does not exist."""
    name = f"clickflow.domains.{domain}.{part}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def domain_sql(domain: str, filename: str) -> str | None:
    f = resources.files(f"clickflow.domains.{domain}").joinpath(filename)
    return f.read_text() if f.is_file() else None
