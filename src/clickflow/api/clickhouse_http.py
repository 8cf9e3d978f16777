"""A read-only ClickHouse HTTP interface on the embedded store (port 8123 by default).

chDB allows one process per data directory, and `clickflow serve` is that process: this
endpoint lets ClickHouse tools (clickhouse-connect, Grafana's ClickHouse data source, curl,
`clickflow sql`) query the store while the pipelines write to it. It speaks the subset of
the ClickHouse HTTP protocol those tools use: ``GET/POST /?query=`` (the POST body is the
query, appended to ``query`` when both are given), ``default_format``, ``FORMAT`` clauses,
``database`` / ``X-ClickHouse-Database``, ``/ping``, and the response headers clients read
(``X-ClickHouse-Summary``, ``-Format``, ``-Query-Id``, ``-Timezone``, ``-Exception-Code``).

Read-only is enforced twice: each query runs on a chDB connection with ``readonly = 1``
(ClickHouse itself refuses writes, settings changes and file/url table functions), and a
statement must start with SELECT, WITH, SHOW, DESCRIBE, DESC or EXPLAIN, be one statement,
and not write a file (``INTO OUTFILE`` runs even under ``readonly = 1`` in chDB).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import Counter, Histogram

from clickflow.config import Settings
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.sql")

QUERIES = Counter("clickflow_sql_queries", "SQL endpoint queries", ["outcome"])
QUERY_SECONDS = Histogram(
    "clickflow_sql_query_seconds",
    "SQL endpoint query time (engine and transfer)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
MAX_QUERY_BYTES = 256 * 1024
MAX_CONCURRENT = 4
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FORMAT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Request parameters that are about the HTTP exchange, not ClickHouse settings: accepted and
# ignored (no compression, no sessions, no progress headers: answers come in one piece).
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "http_zlib_compression_level",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "client_protocol_version",
        "buffer_size",
        # Limits clients send on every query (clickhouse-go, and so Grafana, sends
        # max_execution_time; Metabase max_result_rows): under readonly = 1 they cannot be
        # applied, and the endpoint's own limit (MAX_EXECUTION_S) holds anyway.
        "max_execution_time",
        "max_result_bytes",
        "max_result_rows",
        "result_overflow_mode",
        "timeout_overflow_mode",
        "readonly",
    }
)
MAX_EXECUTION_S = 60
CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONStrings": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
}
# ClickHouse's error codes and the HTTP status its server answers them with.
READONLY, SYNTAX_ERROR, UNKNOWN_DATABASE, AUTHENTICATION_FAILED = 164, 62, 81, 516
QUERY_IS_TOO_LARGE, NOT_IMPLEMENTED = 202, 48
_STATUS = {
    READONLY: 403,
    AUTHENTICATION_FAILED: 401,
    UNKNOWN_DATABASE: 404,
    60: 404,  # UNKNOWN_TABLE
    QUERY_IS_TOO_LARGE: 413,
    NOT_IMPLEMENTED: 501,
    SYNTAX_ERROR: 400,
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    43: 400,  # ILLEGAL_TYPE_OF_ARGUMENT
    46: 400,  # UNKNOWN_FUNCTION
    47: 400,  # UNKNOWN_IDENTIFIER
    73: 400,  # UNKNOWN_FORMAT
    115: 400,  # UNKNOWN_SETTING
    215: 400,  # NOT_AN_AGGREGATE
    159: 504,  # TIMEOUT_EXCEEDED
}
_CODE = re.compile(r"Code: (\d+)\.")
_ERROR_NAME = {
    READONLY: "READONLY",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
}


class QueryRejected(Exception):
    """A query refused before it reaches the engine, with ClickHouse's error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- statement checks ------------------------------------------------------------------------

# One token: a comment, a string, a quoted identifier, a word, or any other character.
# ClickHouse's comments are --, "# " or "#!" to the line end, and /* */; strings take '' and
# \' escapes. Any ";" outside them ends a statement, and chDB runs every statement it gets.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|\#[ !][^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][0-9A-Za-z_.]*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Statement:
    """What the endpoint needs to know of a query: its first keyword and its FORMAT."""

    kind: str
    fmt: str | None


def _tokens(sql: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "other"
        if kind not in ("space", "comment"):
            out.append((kind, m.group()))
    return out


def check_read_only(sql: str) -> Statement:
    """Accept one read statement, or raise :class:`QueryRejected` saying why not."""
    if re.search(r"outfile", sql, re.IGNORECASE):
        # Matched anywhere, even in a string: chDB writes INTO OUTFILE under readonly = 1.
        raise QueryRejected(READONLY, "INTO OUTFILE is not allowed: the SQL endpoint is read-only")
    tokens = _tokens(sql)
    while tokens and tokens[-1] == ("other", ";"):
        tokens.pop()
    if not tokens:
        raise QueryRejected(SYNTAX_ERROR, "Empty query")
    if ("other", ";") in tokens:
        raise QueryRejected(SYNTAX_ERROR, "Multi-statements are not allowed")
    first = next((value for kind, value in tokens if kind != "other" or value != "("), "")
    if first.upper() not in READ_STATEMENTS:
        raise QueryRejected(
            READONLY,
            f"Cannot execute query in readonly mode: only {', '.join(sorted(READ_STATEMENTS))} "
            "statements are allowed on this endpoint",
        )
    fmt = None
    depth = 0
    for i, (kind, value) in enumerate(tokens):
        if value == "(":
            depth += 1
        elif value == ")":
            depth -= 1
        elif depth == 0 and kind == "word" and value.upper() == "FORMAT" and i + 1 < len(tokens):
            nxt_kind, nxt = tokens[i + 1]
            if nxt_kind == "word":
                fmt = nxt
    return Statement(first.upper(), fmt)


# -- the engine side -------------------------------------------------------------------------


class ReadOnlyEngine:
    """A fixed pool of reader threads on the served data directory, each with its own chDB
    connection (``readonly = 1``), opened once and kept for the life of the endpoint.

    Opening the directory again in this process shares the engine the pipelines use, but not
    their connections: a reader never waits for a pipeline's insert (chDB runs queries of
    different connections in parallel). The pool is the endpoint's own, not the event loop's
    default one, whose threads (and so their connections) end after 10 s idle: a dashboard
    refreshing every 30 s would otherwise open a connection and run three set-up statements
    before each query, every one a GIL hand-over in a process whose pipelines hold the GIL."""

    def __init__(self, data_dir: Path, database: str) -> None:
        self._path = os.path.realpath(data_dir)
        self.default_database = database
        self._local = threading.local()
        # MAX_CONCURRENT queries at a time; more wait in the pool's queue.
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="sql-reader")
        timezone = self._pool.submit(self._run, "SELECT timezone()", "TabSeparated", None)
        self.timezone = timezone.result().bytes().decode().strip() or "UTC"

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import chdb

            conn = chdb.connect(self._path)
            # Set once, for the connection's life: under readonly = 1 neither can be changed.
            conn.query(f"SET max_execution_time = {MAX_EXECUTION_S:d}", "TabSeparated")
            conn.query("SET readonly = 1", "TabSeparated")
            self._local.conn = conn
            self._local.database = None
        return conn

    def _run(self, sql: str, fmt: str, database: str | None) -> Any:
        conn = self._connection()
        if database and database != self._local.database:
            # database matched _DATABASE: a plain identifier
            conn.query(f"USE `{database}`", "TabSeparated")  # noqa: S608
            self._local.database = database
        return conn.query(sql, fmt)

    def _query(self, sql: str, fmt: str, database: str) -> tuple[bytes, dict[str, str]]:
        result = self._run(sql, fmt, database)
        body = result.bytes() or b""
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": str(result.rows_read()),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return body, summary

    async def query(self, sql: str, fmt: str, database: str) -> tuple[bytes, dict[str, str]]:
        """The answer and its ``X-ClickHouse-Summary``, from a reader thread."""
        return await asyncio.wrap_future(self._pool.submit(self._query, sql, fmt, database))

    def close(self) -> None:
        """Let running queries end and stop the readers (their connections close with them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- the HTTP side ---------------------------------------------------------------------------


def _token_given(authorization: str | None, key: str | None, password: str | None) -> str:
    """The secret a ClickHouse client sent: Bearer, Basic user:password, X-ClickHouse-Key,
    or the ``password`` parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return ""
            return decoded.partition(":")[2]
    if key is not None:
        return key
    return password or ""


def _error(code: int, message: str, query_id: str, name: bool = True) -> Response:
    """An error as ClickHouse sends it: the text, the status, X-ClickHouse-Exception-Code."""
    text = f"Code: {code}. DB::Exception: {message}"
    if name and code in _ERROR_NAME:
        text += f". ({_ERROR_NAME[code]})"
    return PlainTextResponse(
        text + "\n",
        status_code=_STATUS.get(code, 500),
        headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id},
    )


def create_sql_app(settings: Settings, engine: ReadOnlyEngine) -> FastAPI:
    app = FastAPI(
        title="clickflow SQL (ClickHouse HTTP interface, read-only)",
        version="0.1.0",
        description=(
            "The ClickHouse HTTP protocol on the embedded store, for ClickHouse clients and "
            "Grafana. Only SELECT, WITH, SHOW, DESCRIBE and EXPLAIN run, and the engine runs "
            "them with readonly = 1. When CLICKFLOW_API_TOKEN is set, send it as a Bearer "
            "token or as the password (Basic auth, X-ClickHouse-Key or ?password=)."
        ),
    )
    app.state.settings = settings

    @app.get("/ping", response_class=PlainTextResponse, tags=["sql"], summary="Liveness")
    def ping() -> str:
        return "Ok.\n"

    @app.api_route(
        "/",
        methods=["GET", "POST"],
        tags=["sql"],
        summary="Run a read-only query (the query parameter, then the POST body)",
        response_class=Response,
        responses={
            200: {"description": "The result, in the query's FORMAT or else default_format"},
            400: {"description": "Code 62 and others: the query is wrong"},
            401: {"description": "Code 516: missing or wrong token"},
            403: {"description": "Code 164 (READONLY): not a read statement"},
            404: {"description": "Code 81 / 60: unknown database or table"},
        },
    )
    async def run_query(
        request: Request,
        query: Annotated[str | None, Query(description="SQL; a POST body is appended")] = None,
        database: Annotated[str | None, Query(description="default: the clickflow one")] = None,
        default_format: Annotated[str, Query(description="when there is no FORMAT")] = (
            "TabSeparated"
        ),
        query_id: Annotated[str | None, Query()] = None,
        password: Annotated[str | None, Query(include_in_schema=False)] = None,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
        x_clickhouse_key: Annotated[str | None, Header(include_in_schema=False)] = None,
        x_clickhouse_database: Annotated[str | None, Header()] = None,
    ) -> Response:
        qid = query_id if query_id and len(query_id) <= 128 else str(uuid.uuid4())
        expected = settings.api_token
        if expected:
            given = _token_given(authorization, x_clickhouse_key, password)
            if not hmac.compare_digest(given.encode(), expected.encode()):
                QUERIES.labels("unauthorized").inc()
                return _error(
                    AUTHENTICATION_FAILED,
                    "Authentication failed: send CLICKFLOW_API_TOKEN as a Bearer token or "
                    "as the password",
                    qid,
                )
        unknown = sorted(set(request.query_params) - TRANSPORT_PARAMS)
        if unknown:
            QUERIES.labels("rejected").inc()
            name = unknown[0][:64]
            return _error(READONLY, f"Cannot modify '{name}' setting in readonly mode", qid)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            QUERIES.labels("rejected").inc()
            return _error(
                NOT_IMPLEMENTED,
                "Compressed request bodies are not supported: send the query as it is",
                qid,
            )
        body = await request.body()
        sql = "\n".join(part for part in (query, body.decode("utf-8", "replace")) if part)
        if len(sql.encode()) > MAX_QUERY_BYTES:
            QUERIES.labels("rejected").inc()
            return _error(
                QUERY_IS_TOO_LARGE, f"Query is too large (> {MAX_QUERY_BYTES} bytes)", qid
            )
        db = database or x_clickhouse_database or engine.default_database
        if not _DATABASE.fullmatch(db):
            QUERIES.labels("rejected").inc()
            return _error(UNKNOWN_DATABASE, "Database name is not a plain identifier", qid)
        if not _FORMAT_NAME.fullmatch(default_format):
            QUERIES.labels("rejected").inc()
            return _error(73, "Unknown format", qid)
        try:
            statement = check_read_only(sql)
        except QueryRejected as e:
            QUERIES.labels("rejected").inc()
            return _error(e.code, str(e), qid)
        started = time.perf_counter()
        try:
            data, summary = await engine.query(sql, default_format, db)
        except Exception as e:  # the engine's error, passed on as ClickHouse would
            message = str(e)
            m = _CODE.search(message)
            code = int(m.group(1)) if m else 1002
            text = message[message.find("DB::Exception: ") + 15 :] if m else message
            QUERIES.labels("error").inc()
            log.info("sql query failed", extra=log_fields(query_id=qid, code=code))
            return _error(code, text.strip().rstrip("."), qid, name=False)
        elapsed = time.perf_counter() - started
        QUERY_SECONDS.observe(elapsed)
        QUERIES.labels("ok").inc()
        fmt = statement.fmt or default_format
        return Response(
            data,
            media_type=CONTENT_TYPES.get(fmt, "text/tab-separated-values; charset=UTF-8"),
            headers={
                "X-ClickHouse-Summary": orjson.dumps(summary).decode(),
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Query-Id": qid,
                "X-ClickHouse-Timezone": engine.timezone,
                "X-ClickHouse-Server-Display-Name": "clickflow",
            },
        )

    return app


# -- running it inside `clickflow serve`, and finding it from `clickflow sql` ---------------


class SqlEndpoint:
    """The endpoint's uvicorn server, run on a thread of `clickflow serve`."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from clickflow.runtime.http_server import QuietServer

        self.engine = ReadOnlyEngine(chdb_directory(settings), settings.clickhouse_database)
        config = uvicorn.Config(
            create_sql_app(settings, self.engine),
            host=settings.host,
            port=settings.sql_port,
            log_level="warning",
            access_log=False,
        )
        self.server = QuietServer(config)
        self._thread = threading.Thread(target=self.server.run, name="sql-endpoint", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the SQL endpoint did not start")
            time.sleep(0.02)
        log.info(
            "sql endpoint listening",
            extra=log_fields(url=f"http://{self.server.config.host}:{self.server.config.port}"),
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)
        self.engine.close()


def chdb_directory(settings: Settings) -> Path:
    """The embedded store's directory (only meaningful when no ClickHouse server is set)."""
    return Path("/" + settings.clickhouse_url.removeprefix("chdb://").lstrip("/"))


def chdb_directory_held(data_dir: Path) -> bool:
    """True while a process has ``data_dir`` open: chDB holds a ``flock`` on its status file."""
    import fcntl

    status = data_dir / "status"
    try:
        with status.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def endpoint_answers(settings: Settings, timeout: float = 1.0) -> bool:
    import httpx

    try:
        r = httpx.get(f"http://{settings.host}:{settings.sql_port}/ping", timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.text.strip() == "Ok."


def endpoint_client(settings: Settings) -> Any:
    """A clickhouse-connect HTTP client on the endpoint of a running `clickflow serve`."""
    import clickhouse_connect

    return clickhouse_connect.get_client(
        host=settings.host,
        port=settings.sql_port,
        username="default",
        password=settings.api_token or "",
        database=settings.clickhouse_database,
        autogenerate_session_id=False,
        compress=False,
        connect_timeout=5,
        send_receive_timeout=60,
    )
