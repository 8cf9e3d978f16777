"""Settings: environment variables prefixed ``CLICKFLOW_`` plus an optional TOML file.

The file is named by ``CLICKFLOW_CONFIG`` (or ``./clickflow.toml`` when present); environment
variables win over the file. Unset store URLs mean "start the embedded server": only
``clickflow.runtime`` looks at that, everything else receives concrete URLs.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SECRET_FIELDS = frozenset({"jwt_secret", "api_token"})


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("CLICKFLOW_CONFIG") or "clickflow.toml"
        p = Path(path)
        if not p.is_file():
            if os.environ.get("CLICKFLOW_CONFIG"):
                raise FileNotFoundError(f"CLICKFLOW_CONFIG={path} does not exist")
            return {}
        values = tomllib.loads(p.read_text())
        found = sorted(SECRET_FIELDS & values.keys())
        if found:
            raise ValueError(
                f"{', '.join(found)} in {path}: secrets are read from the environment only "
                f"(set {', '.join('CLICKFLOW_' + f.upper() for f in found)})"
            )
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLICKFLOW_", extra="ignore")

    data_dir: Path = Path(".clickflow")
    host: str = "127.0.0.1"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"  # set it to use an existing Kafka/Redpanda
    kafka_embedded_port: int = 9092  # where `clickflow up` starts tansu when it is not set
    kafka_session_timeout_ms: int = 6000  # low: group joins take ~session.timeout/2 on tansu
    kafka_topic_partitions: int = 4
    # Topics clickflow creates: 1 on the embedded broker; 3 and 2 on a cluster (deploy/cluster)
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int = Field(default=1, ge=1)
    # Consumers per pipeline, in one group (`clickflow serve`: threads sharing the chDB)
    consumers: int = Field(default=1, ge=1, le=64)

    # Stores: None = embedded (started by `clickflow up` or the test fixtures)
    clickhouse_dsn: str | None = None
    clickhouse_database: str = "clickflow"
    # A ClickHouse cluster name (remote_servers): tables become Replicated* ON CLUSTER with
    # Distributed tables in front (clickflow.stores.clickhouse_cluster). None = one server.
    clickhouse_cluster: str | None = None
    postgres_url: str | None = None
    redis_url: str | None = None

    # Ports
    api_port: int = 8000
    collector_port: int = 8001
    generator_port: int = 8002
    auth_port: int = 8003
    grpc_port: int = 9090
    sql_port: int = 8123  # `serve`'s read-only ClickHouse HTTP interface (0: off)
    # `clickflow process`: /metrics, /healthz (`up` gives each process its own, from here up)
    process_port: int = 8010

    # Operations
    pipeline_stall_seconds: float = 120.0  # health turns red: records pending, nothing committed
    unhealthy_restart_seconds: float = 60.0  # `up` restarts a process red this long
    profiling: bool = False  # GET /debug/profile on every service (token-protected)
    # How long `clickflow up` waits for every service to answer /healthz (a busy machine: more)
    up_ready_timeout_s: float = Field(default=60.0, gt=0)

    # Auth / security (secrets only from the environment)
    auth_url: str | None = None
    jwt_secret: str = Field(default="clickflow-dev-secret-change-me-in-production", repr=False)
    api_token: str | None = Field(default=None, repr=False)  # when set, query APIs require it

    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def clickhouse_url(self) -> str:
        """The ClickHouse DSN in use: a server URL, or chDB inside the data directory."""
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb:///{(self.data_dir / 'clickhouse').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
