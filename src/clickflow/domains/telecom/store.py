"""Writing telecom events to PostgreSQL: raw events (ingestor) and aggregates (aggregator).

Both writers take a list of validated events, deduplicated within the list, and write them
in ONE transaction: a COPY into a session temp table, then one set-based statement. A
failure rolls the whole batch back and the consumer framework retries it; the writes are
idempotent (each writer first inserts the events' keys (source_id, event_id) into its own
unpartitioned key table, ON CONFLICT DO NOTHING, and writes only the events whose key was
new), so a retry, a redelivery after a crash or a re-send with another ``started_at``
changes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg
from prometheus_client import Counter

from clickflow.domains.telecom.events import TelecomEvent, meta_json
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.telecom")

PARTITIONS_CREATED = Counter(
    "clickflow_telecom_partitions_created", "Month partitions created on demand or ahead"
)

COLUMNS = (
    "source_id, event_id, user_id, type, started_at, ended_at, "
    "duration_sec, bytes_up, bytes_down, meta"
)

STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS tc_stage (
    source_id text, event_id text, user_id text, type text,
    started_at timestamptz, ended_at timestamptz,
    duration_sec integer, bytes_up bigint, bytes_down bigint, meta jsonb
) ON COMMIT DELETE ROWS
"""

# The key table decides (seed 004: an event is (source_id, event_id)); a partitioned table
# cannot have that unique key itself (it must contain the partition key). Two ingestors
# meeting the same new keys in different orders can deadlock: PostgreSQL aborts one
# transaction and the framework retries its batch.
INSERT_RAW_SQL = """
WITH new AS (
    INSERT INTO telecom.event_keys (source_id, event_id, started_at)
    SELECT source_id, event_id, started_at FROM tc_stage
    ON CONFLICT (source_id, event_id) DO NOTHING
    RETURNING source_id, event_id
)
INSERT INTO telecom.events_raw (source_id, event_id, user_id, type, started_at, ended_at,
                                duration_sec, bytes_up, bytes_down, meta)
SELECT s.source_id, s.event_id, s.user_id, s.type, s.started_at, s.ended_at,
       s.duration_sec, s.bytes_up, s.bytes_down, s.meta
FROM tc_stage s JOIN new n USING (source_id, event_id)
"""

# One statement: record the keys not applied yet, then add exactly those events to every
# aggregate, and bump the version the API cache is keyed by. Rows are ordered so that two
# aggregators lock the shared global rows in the same order (no deadlock).
APPLY_AGG_SQL = """
WITH new AS (
    INSERT INTO telecom.agg_applied (source_id, event_id, started_at)
    SELECT source_id, event_id, started_at FROM tc_stage
    ON CONFLICT (source_id, event_id) DO NOTHING
    RETURNING source_id, event_id
), fresh AS (
    SELECT s.user_id, s.type, s.duration_sec, s.bytes_up, s.bytes_down,
           (s.started_at AT TIME ZONE 'UTC')::date AS day
    FROM tc_stage s JOIN new n USING (source_id, event_id)
), by_user_day AS (
    SELECT user_id, day, type, count(*) AS events, sum(duration_sec) AS duration_sec,
           sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down
    FROM fresh GROUP BY user_id, day, type
), d AS (
    INSERT INTO telecom.agg_day AS a
        (user_id, day, type, events, duration_sec, bytes_up, bytes_down)
    SELECT * FROM by_user_day ORDER BY user_id, day, type
    ON CONFLICT (user_id, day, type) DO UPDATE SET
        events = a.events + EXCLUDED.events,
        duration_sec = a.duration_sec + EXCLUDED.duration_sec,
        bytes_up = a.bytes_up + EXCLUDED.bytes_up,
        bytes_down = a.bytes_down + EXCLUDED.bytes_down
    RETURNING 1
), m AS (
    INSERT INTO telecom.agg_month AS a
        (user_id, month, type, events, duration_sec, bytes_up, bytes_down)
    SELECT user_id, date_trunc('month', day)::date, type, sum(events), sum(duration_sec),
           sum(bytes_up), sum(bytes_down)
    FROM by_user_day GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (user_id, month, type) DO UPDATE SET
        events = a.events + EXCLUDED.events,
        duration_sec = a.duration_sec + EXCLUDED.duration_sec,
        bytes_up = a.bytes_up + EXCLUDED.bytes_up,
        bytes_down = a.bytes_down + EXCLUDED.bytes_down
    RETURNING 1
), gd AS (
    INSERT INTO telecom.agg_global_day AS a
        (day, type, events, duration_sec, bytes_up, bytes_down)
    SELECT day, type, sum(events), sum(duration_sec), sum(bytes_up), sum(bytes_down)
    FROM by_user_day GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, type) DO UPDATE SET
        events = a.events + EXCLUDED.events,
        duration_sec = a.duration_sec + EXCLUDED.duration_sec,
        bytes_up = a.bytes_up + EXCLUDED.bytes_up,
        bytes_down = a.bytes_down + EXCLUDED.bytes_down
    RETURNING 1
), gm AS (
    INSERT INTO telecom.agg_global_month AS a
        (month, type, events, duration_sec, bytes_up, bytes_down)
    SELECT date_trunc('month', day)::date, type, sum(events), sum(duration_sec),
           sum(bytes_up), sum(bytes_down)
    FROM by_user_day GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (month, type) DO UPDATE SET
        events = a.events + EXCLUDED.events,
        duration_sec = a.duration_sec + EXCLUDED.duration_sec,
        bytes_up = a.bytes_up + EXCLUDED.bytes_up,
        bytes_down = a.bytes_down + EXCLUDED.bytes_down
    RETURNING 1
), v AS (
    UPDATE telecom.agg_state SET version = version + 1, updated_at = now()
    WHERE id = 1 AND EXISTS (SELECT 1 FROM new)
    RETURNING version
)
SELECT (SELECT count(*) FROM fresh), (SELECT version FROM v),
       (SELECT count(*) FROM d) + (SELECT count(*) FROM m)
       + (SELECT count(*) FROM gd) + (SELECT count(*) FROM gm)
"""


def month_of(ts: datetime) -> date:
    ts = ts.astimezone(UTC)
    return date(ts.year, ts.month, 1)


def add_months(d: date, n: int) -> date:
    y, m = divmod(d.year * 12 + d.month - 1 + n, 12)
    return date(y, m + 1, 1)


def unique_events(events: list[TelecomEvent]) -> list[TelecomEvent]:
    """Drop duplicates inside one batch (same (source_id, event_id)); the first one wins,
    as it does across batches (the key tables keep the first writer's row)."""
    seen: set[tuple[str, str]] = set()
    out: list[TelecomEvent] = []
    for e in events:
        k = (e.source_id, e.event_id)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


class Partitions:
    """Creates month partitions on demand; remembers the months known to exist."""

    AHEAD_MONTHS = 3
    AHEAD_EVERY_S = 3600.0

    def __init__(self) -> None:
        self._known: set[date] = set()
        self._ahead_at = 0.0
        self._lock = threading.Lock()

    def forget(self) -> None:
        with self._lock:
            self._known.clear()

    def ensure(self, conn: psycopg.Connection, months: set[date]) -> int:
        """Make sure ``months`` (and the months ahead, hourly) have partitions.

        Runs in its own short transaction before the batch's, so the batch transaction never
        takes the parent's lock; the advisory lock in SQL serialises concurrent creators."""
        with self._lock:
            now = time.monotonic()
            wanted = set(months) - self._known
            if now - self._ahead_at > self.AHEAD_EVERY_S:
                this = month_of(datetime.now(UTC))
                wanted |= {add_months(this, k) for k in range(-1, self.AHEAD_MONTHS + 1)}
                self._ahead_at = now
            if not wanted:
                return 0
            with conn.transaction():
                row = conn.execute(
                    "SELECT telecom.ensure_partitions(%s::date[])", [sorted(wanted)]
                ).fetchone()
            created = int(row[0]) if row else 0
            self._known |= wanted
            if created:
                PARTITIONS_CREATED.inc(created)
                log.info(
                    "partitions created",
                    extra=log_fields(months=[m.isoformat() for m in sorted(wanted)], n=created),
                )
            return created


def _copy_stage(cur: psycopg.Cursor, events: list[TelecomEvent]) -> None:
    with cur.copy(f"COPY tc_stage ({COLUMNS}) FROM STDIN") as copy:
        write = copy.write_row
        for e in events:
            write(
                (
                    e.source_id,
                    e.event_id,
                    e.user_id,
                    e.type.value,
                    e.started_at,
                    e.ended_at,
                    e.duration_sec,
                    e.bytes_up,
                    e.bytes_down,
                    meta_json(e),
                )
            )


@dataclass
class WriteResult:
    inserted: int
    version: int | None = None


class _Writer:
    """A dedicated connection (one per consumer), reopened after a failure."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection | None = None
        self.partitions = Partitions()

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._url, autocommit=True)
            self._conn.execute("SET synchronous_commit = on")
            self._conn.execute(STAGE_SQL)  # type: ignore[arg-type]  # constant
        return self._conn

    def _run(self, events: list[TelecomEvent], statement: str) -> tuple[tuple | None, int]:
        """Stage ``events`` and run ``statement`` in one transaction: (first row, rowcount)."""
        conn = self.connection()
        try:
            self.partitions.ensure(conn, {month_of(e.started_at) for e in events})
            with conn.transaction():
                cur = conn.cursor()
                _copy_stage(cur, events)
                cur.execute(statement)  # type: ignore[arg-type]  # constant
                row = cur.fetchone() if cur.description else None
                return row, cur.rowcount
        except psycopg.Error:
            conn.close()  # the next attempt starts on a fresh connection...
            self.partitions.forget()  # ...and re-checks partitions (retention may have run)
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class RawWriter(_Writer):
    """events_raw: COPY to a temp table, claim the keys in event_keys, insert the events
    whose key was new; one transaction."""

    def write(self, events: list[TelecomEvent]) -> WriteResult:
        if not events:
            return WriteResult(0)
        _, rowcount = self._run(unique_events(events), INSERT_RAW_SQL)
        return WriteResult(max(0, rowcount))


class AggregateWriter(_Writer):
    """agg_day / agg_month / global: only events whose (source_id, event_id) is new in
    agg_applied count."""

    def write(self, events: list[TelecomEvent]) -> WriteResult:
        if not events:
            return WriteResult(0)
        row, _ = self._run(unique_events(events), APPLY_AGG_SQL)
        assert row is not None
        return WriteResult(int(row[0]), int(row[1]) if row[1] is not None else None)
