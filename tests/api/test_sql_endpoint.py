"""The read-only ClickHouse HTTP interface of `clickflow serve`, with its pipelines running:
clickhouse-connect, curl and `clickflow sql` read what the page-view pipeline stored; writes,
files and settings changes are refused; the token is required in every form clients send."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import clickhouse_connect
import httpx
import orjson
import pytest
from confluent_kafka import Producer

from clickflow.api.clickhouse_http import QueryRejected, check_read_only
from clickflow.runtime.ports import free_port

EVENTS = 700  # page views spread over the last 7 days


@dataclass
class Served:
    env: dict[str, str]
    url: str
    port: int
    token: str
    data: Path


def _page_views(topic: str, bootstrap: str) -> None:
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(EVENTS):
        at = now - timedelta(minutes=15 * i + 5)  # 700 x 15 min: the last ~7.3 days
        event = {
            "page_id": f"/p/{i % 7}",
            "user_id": f"u{i % 50}",
            "view_duration_ms": 1000 + i,
            "timestamp": at.isoformat(),
            "is_bounce": i % 3 == 0,
            "region": "eu",
        }
        producer.produce(topic, orjson.dumps(event), key=str(i).encode())
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, redis_url: str
) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("sql-endpoint")
    port = free_port()
    token = secrets.token_urlsafe(16)
    topic = f"pv-sql-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKFLOW_")}
    env.update(
        {
            "CLICKFLOW_DATA_DIR": str(data),
            "CLICKFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CLICKFLOW_REDIS_URL": redis_url,
            "CLICKFLOW_API_PORT": str(free_port()),
            "CLICKFLOW_GRPC_PORT": str(free_port()),
            "CLICKFLOW_SQL_PORT": str(port),
            "CLICKFLOW_API_TOKEN": token,
            "CLICKFLOW_PAGEVIEWS_TOPIC": topic,
        }
    )
    log = open(data / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clickflow", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the SQL endpoint did not answer /ping"
            try:
                if httpx.get(f"{url}/ping", timeout=2).text == "Ok.\n":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        _page_views(topic, kafka_bootstrap)
        yield Served(env, url, port, token, data)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _client(served: Served):
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=served.port, username="default", password=served.token
    )


def _wait_stored(served: Served) -> None:
    client = _client(served)
    deadline = time.monotonic() + 120
    while client.command("SELECT count() FROM page_views_raw") < EVENTS:
        assert time.monotonic() < deadline, "the page views were not stored"
        time.sleep(0.5)


def _get(served: Served, query: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {served.token}", **kw.pop("headers", {})}
    return httpx.get(served.url, params={"query": query, **kw}, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select 1;",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "WITH 1 AS x SELECT x",
        "/* hi */ SHOW TABLES",
        "-- c\nDESCRIBE page_views_raw",
        "# c; still a comment\nSELECT 1",
        "EXPLAIN SELECT 1",
        "SELECT ';' AS semi, 'INSERT' AS word",
    ],
)
def test_read_statements_pass_the_check(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "/* SELECT */ DROP TABLE t",
        "SELECT 1; DROP TABLE t",
        "SELECT 1 #; DROP TABLE t",  # "#" starts a comment only before a space or "!"
        "SELECT 1 INTO OUTFILE 'x.csv'",
        "SET readonly = 0",
        "SYSTEM STOP MERGES",
        "",
        "  ;  ",
    ],
)
def test_other_statements_are_refused(sql: str) -> None:
    with pytest.raises(QueryRejected):
        check_read_only(sql)


def test_format_clause_is_found_outside_functions() -> None:
    assert check_read_only("SELECT format('{}', 1) FORMAT JSON").fmt == "JSON"
    assert check_read_only("SELECT format('{}', 'FORMAT CSV')").fmt is None


def test_clickhouse_connect_gets_typed_rows_of_the_running_pipeline(served: Served) -> None:
    _wait_stored(served)
    client = _client(served)
    result = client.query(
        "SELECT toDate(window_start) AS day, sumMerge(view_count) AS views, "
        "uniqExactMerge(unique_users) AS users FROM page_views_agg_minute "
        "WHERE window_start >= now() - INTERVAL 7 DAY GROUP BY day ORDER BY day"
    )
    assert result.column_names == ("day", "views", "users")
    days = [row[0] for row in result.result_rows]
    assert all(type(d).__name__ == "date" for d in days), days
    assert all(isinstance(row[1], int) and isinstance(row[2], int) for row in result.result_rows)
    # 15-minute steps over 7 days: 672 views fall inside the window (+/- one at its edge).
    assert 668 <= sum(row[1] for row in result.result_rows) <= EVENTS
    assert client.query("SELECT database()").result_rows == [("clickflow",)]


def test_curl_gets_json_and_tsv(served: Served) -> None:
    _wait_stored(served)
    auth = f"Authorization: Bearer {served.token}"
    out = subprocess.run(
        ["curl", "-sS", "-H", auth, "--data-binary",
         "SELECT page_id, count() AS n FROM page_views_raw GROUP BY page_id "
         "ORDER BY page_id FORMAT JSON", served.url + "/"],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    doc = orjson.loads(out)
    assert [m["name"] for m in doc["meta"]] == ["page_id", "n"]
    assert {r["page_id"]: int(r["n"]) for r in doc["data"]} == {f"/p/{i}": 100 for i in range(7)}
    tsv = subprocess.run(
        ["curl", "-sS", "-G", "-H", auth, "--data-urlencode",
         "query=SELECT page_id, count() FROM page_views_raw GROUP BY page_id ORDER BY page_id",
         "--data-urlencode", "default_format=TSV", served.url + "/"],
        capture_output=True, check=True, timeout=30,
    ).stdout.decode()  # fmt: skip
    assert tsv.splitlines() == [f"/p/{i}\t100" for i in range(7)]
    # The database parameter, and the header clients send
    r = _get(served, "SELECT count() FROM one", database="system")
    assert r.status_code == 200 and r.text == "1\n"
    assert r.headers["X-ClickHouse-Format"] == "TabSeparated"
    r = _get(served, "SELECT 1", headers={"X-ClickHouse-Database": "no_such_db"})
    assert r.status_code == 404 and r.headers["X-ClickHouse-Exception-Code"] == "81"
    summary = orjson.loads(_get(served, "SELECT 1").headers["X-ClickHouse-Summary"])
    assert int(summary["read_rows"]) >= 1


def test_writes_files_and_settings_are_refused(served: Served, tmp_path: Path) -> None:
    _wait_stored(served)
    target = tmp_path / "out.tsv"
    refused = {
        "INSERT INTO page_views_raw SELECT * FROM page_views_raw": "164",
        "DROP TABLE page_views_raw": "164",
        "SELECT 1; DROP TABLE page_views_raw": "62",
        f"SELECT * FROM page_views_raw INTO OUTFILE '{target}'": "164",  # noqa: S608
        # passes the statement check: the engine itself refuses (readonly = 1)
        "SELECT * FROM file('/etc/hostname', 'LineAsString')": "164",
        "SELECT 1 SETTINGS readonly = 0": "164",
    }
    for sql, code in refused.items():
        r = _get(served, sql)
        assert r.status_code in (400, 403), (sql, r.status_code, r.text)
        assert r.headers["X-ClickHouse-Exception-Code"] == code, (sql, r.text)
        assert r.text.startswith(f"Code: {code}. DB::Exception: "), r.text
    r = _get(served, "SELECT 1", max_threads="1")
    assert r.status_code == 403 and "readonly" in r.text
    # The limit clickhouse-go (Grafana) sends on every query is accepted, not applied
    assert _get(served, "SELECT 1", max_execution_time="30").text == "1\n"
    with pytest.raises(Exception, match="164"):
        _client(served).command("CREATE TABLE x (a Int8) ENGINE = Memory")
    assert not target.exists()
    assert _client(served).command("SELECT count() FROM page_views_raw") == EVENTS


def test_the_token_is_required_in_any_form_clients_send(served: Served) -> None:
    q = {"query": "SELECT 1"}
    assert httpx.get(f"{served.url}/ping", timeout=5).text == "Ok.\n"  # as ClickHouse's
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-ClickHouse-Key": "wrong"}):
        r = httpx.get(served.url, params=q, headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["X-ClickHouse-Exception-Code"] == "516"
    basic = base64.b64encode(f"default:{served.token}".encode()).decode()
    accepted = [
        ({"Authorization": f"Bearer {served.token}"}, q),
        ({"Authorization": f"Basic {basic}"}, q),
        ({"X-ClickHouse-User": "default", "X-ClickHouse-Key": served.token}, q),
        ({}, {**q, "user": "default", "password": served.token}),
    ]
    for headers, params in accepted:
        r = httpx.get(served.url, params=params, headers=headers, timeout=10)
        assert (r.status_code, r.text) == (200, "1\n"), headers
    with pytest.raises(Exception, match="516"):
        clickhouse_connect.get_client(host="127.0.0.1", port=served.port, password="wrong")


def test_clickflow_sql_goes_through_the_endpoint_beside_serve(served: Served) -> None:
    _wait_stored(served)
    out = subprocess.run(
        [sys.executable, "-m", "clickflow", "sql", "SELECT count() AS n FROM page_views_raw"],
        env=served.env,
        cwd=served.data,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert [orjson.loads(line) for line in out.stdout.splitlines()] == [{"n": EVENTS}]
    # A wrong port: the store is held, so the command says so instead of a chDB traceback
    env = {**served.env, "CLICKFLOW_SQL_PORT": str(free_port())}
    out = subprocess.run(
        [sys.executable, "-m", "clickflow", "sql", "SELECT 1"],
        env=env,
        cwd=served.data,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 1 and b"CLICKFLOW_SQL_PORT" in out.stderr, out.stderr[-2000:]


_READERS_SCRIPT = """
import asyncio, json, sys, threading
import chdb, httpx
from clickflow.api import clickhouse_http as ch
from clickflow.config import Settings

opened = []
connect = chdb.connect
def counting_connect(path):
    opened.append(threading.current_thread().name)
    return connect(path)
chdb.connect = counting_connect
connect(sys.argv[1]).query("CREATE DATABASE IF NOT EXISTS clickflow")
engine = ch.ReadOnlyEngine(sys.argv[1], "clickflow")
app = ch.create_sql_app(Settings(api_token=None), engine)

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sql") as client:
        queries = [f"SELECT {i} + sleepEachRow(0.01) * 0" for i in range(24)]
        answers = await asyncio.gather(*(client.get("/", params={"query": q}) for q in queries))
    return [a.text.strip() for a in answers]

answers = asyncio.run(main())
engine.close()
print(json.dumps({"answers": answers, "opened": opened}))
"""


def test_queries_share_a_few_long_lived_reader_connections(tmp_path: Path) -> None:
    """24 queries at once are answered by at most MAX_CONCURRENT connections, opened once:
    not one per thread of the event loop's pool (up to 40, and new ones after 10 s idle)."""
    from clickflow.api.clickhouse_http import MAX_CONCURRENT

    # chDB opens one data directory per process: this one runs in a process of its own.
    out = subprocess.run(
        [sys.executable, "-c", _READERS_SCRIPT, str(tmp_path / "ch")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert result["answers"] == [str(i) for i in range(24)]
    assert 1 <= len(result["opened"]) <= MAX_CONCURRENT, result["opened"]
