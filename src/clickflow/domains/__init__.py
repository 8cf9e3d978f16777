"""Event domains. Each is a package that owns its schema, SQL, pipeline, routes and traffic.

Conventions (all optional, discovered by name):

* ``schema.sql``           ClickHouse DDL, idempotent, applied by the migration runner
* ``schema_postgres.sql``  PostgreSQL DDL, idempotent
* ``pipeline.py``          ``PIPELINES: list[PipelineSpec]``
* ``api.py``               ``router: fastapi.APIRouter`` mounted by the query API
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
