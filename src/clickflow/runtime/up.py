"""`clickflow up`: embedded servers + every service, supervised, stopped cleanly on Ctrl-C.

This is the only place that decides "embedded or not": a store URL left unset means start
the embedded server here and hand its concrete URL to the children through the environment.
"""

from __future__ import annotations

import signal
import sys
import time

import httpx
from rich.console import Console

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.runtime.broker import start_broker
from clickflow.runtime.exceptions import RuntimeStartError
from clickflow.runtime.ports import require_free
from clickflow.runtime.postgres_server import start_postgres
from clickflow.runtime.redis_server import start_redis
from clickflow.runtime.supervisor import Child, Supervisor

console = Console(stderr=True)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "clickflow", *args]


def process_children(settings: Settings) -> list[tuple[str, int]]:
    """The pipelines `up` runs as `clickflow process` (PostgreSQL ones; the ClickHouse ones
    run inside `serve`, chDB's one process per directory) and each one's HTTP port."""
    names = []
    for domain in DOMAINS:
        mod = domain_module(domain, "pipeline")
        for spec in getattr(mod, "PIPELINES", []) if mod else []:
            if spec.store == "postgres":
                names.append(spec.name)
    return [(name, settings.process_port + i) for i, name in enumerate(names)]


def check_ports(settings: Settings, demo: bool, embedded_kafka: bool) -> None:
    h = settings.host
    if embedded_kafka:
        require_free(
            h,
            settings.kafka_embedded_port,
            "the embedded Kafka broker",
            "CLICKFLOW_KAFKA_EMBEDDED_PORT",
        )
    require_free(h, settings.api_port, "the query API", "CLICKFLOW_API_PORT")
    require_free(h, settings.collector_port, "the collector", "CLICKFLOW_COLLECTOR_PORT")
    require_free(h, settings.auth_port, "the auth service", "CLICKFLOW_AUTH_PORT")
    require_free(h, settings.grpc_port, "the gRPC service", "CLICKFLOW_GRPC_PORT")
    if settings.sql_port and settings.clickhouse_url.startswith("chdb:"):
        require_free(h, settings.sql_port, "the SQL endpoint", "CLICKFLOW_SQL_PORT")
    if demo:
        require_free(h, settings.generator_port, "the generator", "CLICKFLOW_GENERATOR_PORT")
    for name, port in process_children(settings):
        require_free(h, port, f"`process {name}`", "CLICKFLOW_PROCESS_PORT (the first one)")


def up(settings: Settings, demo: bool) -> None:
    embedded_kafka = "kafka_bootstrap" not in settings.model_fields_set
    try:
        check_ports(settings, demo, embedded_kafka)
    except RuntimeStartError as e:
        raise SystemExit(f"clickflow: {e}") from None
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(log_dir=data / "logs", unhealthy_after=settings.unhealthy_restart_seconds)
    # Consumers per pipeline (CLICKFLOW_CONSUMERS or the config file) for every child.
    env = {"CLICKFLOW_DATA_DIR": str(data), "CLICKFLOW_CONSUMERS": str(settings.consumers)}
    try:
        with console.status("starting embedded servers..."):
            bootstrap = settings.kafka_bootstrap
            if embedded_kafka:
                bootstrap = f"{settings.host}:{settings.kafka_embedded_port}"
                sup.adopt(
                    "kafka",
                    start_broker(settings.host, settings.kafka_embedded_port, data / "logs"),
                )
                console.print(f"[green]✓[/] Kafka (tansu, in memory) on {bootstrap}")
            env["CLICKFLOW_KAFKA_BOOTSTRAP"] = bootstrap
            if not settings.redis_url:
                proc, url = start_redis(data / "redis")
                sup.adopt("redis", proc)
                env["CLICKFLOW_REDIS_URL"] = url
                console.print(f"[green]✓[/] Redis (embedded) at {url}")
            if not settings.postgres_url:
                proc, url = start_postgres(data / "postgres" / "data")
                sup.adopt("postgres", proc, stop_signal=signal.SIGINT)
                env["CLICKFLOW_POSTGRES_URL"] = url
                console.print(f"[green]✓[/] PostgreSQL (embedded) at {url}")
            console.print(f"[green]✓[/] ClickHouse at {settings.clickhouse_url}")
        if not settings.auth_url:
            env["CLICKFLOW_AUTH_URL"] = f"http://{settings.host}:{settings.auth_port}"
        h = settings.host
        api_health = f"http://{h}:{settings.api_port}/healthz"
        sup.add(Child("serve", _cmd("serve"), env, health_url=api_health))
        sup.add(Child("collector", _cmd("collect"), env))
        sup.add(Child("auth", _cmd("auth"), env))
        for name, port in process_children(settings):
            penv = {**env, "CLICKFLOW_PROCESS_PORT": str(port)}
            health = f"http://{h}:{port}/healthz"
            sup.add(Child(f"process-{name}", _cmd("process", name), penv, health_url=health))
        if demo:
            sup.add(Child("generator", _cmd("generate", "--demo", "--quiet"), env))
        _wait_ready(settings, sup, settings.up_ready_timeout_s)
    except RuntimeStartError as e:
        sup.stop(grace=5)
        raise SystemExit(f"clickflow: {e}") from None
    except BaseException:
        sup.stop(grace=5)
        raise
    sup.run_forever()


def _wait_ready(settings: Settings, sup: Supervisor, timeout: float = 60.0) -> None:
    urls = {
        "query API + dashboard": f"http://{settings.host}:{settings.api_port}",
        "collector": f"http://{settings.host}:{settings.collector_port}",
    }
    for name, port in process_children(settings):
        urls[f"process {name} (health, metrics)"] = f"http://{settings.host}:{port}"
    deadline = time.monotonic() + timeout
    with console.status("waiting for services to answer /healthz..."):
        for name, url in urls.items():
            while True:
                sup.check()
                try:
                    if sup.http.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeStartError(
                        f"{name} did not become healthy within {timeout:.0f}s: see {sup.log_dir}/"
                    )
                time.sleep(0.3)
            console.print(f"[green]✓[/] {name}: {url}  (docs: {url}/docs)")
    if settings.sql_port and settings.clickhouse_url.startswith("chdb:"):
        # `serve` starts it before its query API, so it answers once the API does.
        sql = f"http://{settings.host}:{settings.sql_port}"
        console.print(f"[green]✓[/] SQL (ClickHouse HTTP, read-only): {sql}  (docs: {sql}/docs)")
    console.print(f"[bold]clickflow is up.[/] Logs in {sup.log_dir}. Ctrl-C stops everything.")
