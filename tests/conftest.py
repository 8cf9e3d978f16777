"""Session fixtures: real servers, started here (or taken from CLICKFLOW_TEST_* URLs).

* Kafka: a tansu broker on a free port (CLICKFLOW_TEST_KAFKA_BOOTSTRAP to use another).
* Redis / PostgreSQL: the embedded servers (CLICKFLOW_TEST_REDIS_URL / _POSTGRES_URL).
* ClickHouse: chDB in a temporary directory (CLICKFLOW_TEST_CLICKHOUSE_DSN for a server).
  chDB allows one data directory per process: every in-process test shares this one and
  isolates itself with its own database (the ``ch_database`` fixture).

No process outlives the session: pytest adopts orphans (tests/processes.py), processes
started with ``tests.processes.spawn`` are stopped at the end, and any other descendant still
alive then is killed and fails the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port
from tests import processes


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    processes.stop_tree(proc, sig, timeout=10)


def pytest_configure(config: pytest.Config) -> None:  # noqa: ARG001
    processes.become_subreaper()


@pytest.fixture(scope="session", autouse=True)
def _stop_started_processes() -> Iterator[None]:
    """Set up first, so torn down last: after every other session fixture stopped its server."""
    yield
    processes.stop_all()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    """Fail the run if a process started by a test is still alive (and kill it)."""
    left = processes.leftovers()
    if not left:
        return
    lines = [processes.describe(p) for p in left]
    processes.kill_tree(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left running by the tests (now killed)", red=True)
        for line in lines:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clickflow")


@pytest.fixture(scope="session")
def kafka_bootstrap(data_root: Path) -> Iterator[str]:
    url = os.environ.get("CLICKFLOW_TEST_KAFKA_BOOTSTRAP")
    if url:
        yield url
        return
    port = free_port()
    proc = start_broker("127.0.0.1", port, data_root / "logs")
    yield f"127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="session")
def redis_url(data_root: Path) -> Iterator[str]:
    url = os.environ.get("CLICKFLOW_TEST_REDIS_URL")
    if url:
        yield url
        return
    from clickflow.runtime.redis_server import start_redis

    proc, url = start_redis(data_root / "redis")
    yield url
    _stop(proc)


@pytest.fixture(scope="session")
def postgres_url(data_root: Path) -> Iterator[str]:
    url = os.environ.get("CLICKFLOW_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import shutil
    import tempfile

    from clickflow.runtime.postgres_server import start_postgres

    # Not under pytest's tmp dir: the server runs as another OS user (as root), and every
    # pytest session chmods /tmp/pytest-of-<user> back to 0700, cutting the server off.
    root = Path(tempfile.mkdtemp(prefix="clickflow-test-pg-"))
    proc, url = start_postgres(root / "data")
    yield url
    _stop(proc, signal.SIGINT)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def clickhouse_dsn(data_root: Path) -> str:
    return os.environ.get("CLICKFLOW_TEST_CLICKHOUSE_DSN") or f"chdb:///{data_root / 'clickhouse'}"


@pytest.fixture(scope="session")
def base_settings(kafka_bootstrap: str, clickhouse_dsn: str, data_root: Path) -> Settings:
    """Kafka + ClickHouse only; tests that need Redis/PostgreSQL ask for `settings_full`."""
    return Settings(
        data_dir=data_root,
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_dsn=clickhouse_dsn,
    )


@pytest.fixture
def ch_database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(base_settings: Settings, ch_database: str) -> Settings:
    """Settings with a fresh ClickHouse database for this test."""
    return base_settings.model_copy(update={"clickhouse_database": ch_database})


@pytest.fixture
def settings_full(settings: Settings, redis_url: str, postgres_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": redis_url, "postgres_url": postgres_url})


@pytest.fixture
def topic() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
