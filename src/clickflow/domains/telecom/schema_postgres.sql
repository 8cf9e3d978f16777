-- Telecom usage (seed 004): raw events partitioned by month, per-user and global aggregates.
-- Idempotent: applied at every start-up by clickflow.migrations (one script).
--
-- Deduplication. An event is (source_id, event_id) (seed 004): a re-send with a corrected
-- started_at is the same event. A partitioned table's unique key must contain the partition
-- key, so events_raw cannot enforce that alone; each writer has a small unpartitioned key
-- table instead (events_raw: event_keys; the aggregates: agg_applied), written in the same
-- transaction as the rows: the first (source_id, event_id) wins, later copies change nothing.
-- events_raw keeps its (source_id, event_id, started_at) primary key (lookups, and a second
-- guard). Measured cost: see docs/reliability.md (telecom).
--
-- Partitions. telecom.ensure_partitions(months) creates the month partitions of events_raw
-- that do not exist yet. The migration creates the previous, current and
-- next three months; the ingestor and the aggregator call it before each batch for the
-- months of that batch they have not seen yet (kept in memory), and once an hour for the
-- months ahead. So there is never a manual step and never a failed insert for a new month,
-- and no DEFAULT partition (which would make every later CREATE PARTITION scan it).
-- telecom.drop_partitions_before(month) is the retention job (`clickflow telecom retention`).
-- It drops events_raw months, deletes the keys of those months from event_keys and
-- agg_applied, and keeps the aggregates. An event
-- arriving later for a dropped month re-creates its partition; had it been counted before,
-- it would be counted again, which needs a redelivery older than the retention (Kafka keeps
-- 7 days, retention is months).

-- Concurrent start-ups (ingestor and aggregator processes) apply this one at a time: the
-- script runs as one implicit transaction, which holds this lock to its end.
SELECT pg_advisory_xact_lock(hashtext('telecom.migrate'));

CREATE SCHEMA IF NOT EXISTS telecom;

CREATE TABLE IF NOT EXISTS telecom.events_raw (
    source_id    text        NOT NULL,
    event_id     text        NOT NULL,
    user_id      text        NOT NULL,
    type         text        NOT NULL CHECK (type IN ('CALL_OUT', 'CALL_IN', 'SMS_SENT', 'SMS_RECEIVED', 'DATA')),
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    duration_sec integer     NOT NULL CHECK (duration_sec >= 0),
    bytes_up     bigint      NOT NULL CHECK (bytes_up >= 0),
    bytes_down   bigint      NOT NULL CHECK (bytes_down >= 0),
    meta         jsonb       NOT NULL DEFAULT '{}',
    ingested_at  timestamptz NOT NULL DEFAULT clock_timestamp()
) PARTITION BY RANGE (started_at);
-- Until 2026-12 events_raw had PRIMARY KEY (source_id, event_id, started_at); event_keys
-- decides now, and a second unique index cost ~40% of the ingest rate.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'events_raw_pkey'
               AND conrelid = 'telecom.events_raw'::regclass) THEN
        ALTER TABLE telecom.events_raw DROP CONSTRAINT events_raw_pkey;
    END IF;
END $$;

-- A user's detail for a period, newest first (keyset pagination, a backward index scan).
CREATE INDEX IF NOT EXISTS events_raw_user_time
    ON telecom.events_raw (user_id, started_at, source_id, event_id);

-- The ingestor's record of the events it has stored: an event goes into events_raw only in
-- the transaction that inserts its key here. Created (and filled from events_raw) once.
DO $$
BEGIN
    IF to_regclass('telecom.event_keys') IS NULL THEN
        CREATE TABLE telecom.event_keys (
            source_id  text        NOT NULL,
            event_id   text        NOT NULL,
            started_at timestamptz NOT NULL,  -- of the stored row (retention)
            PRIMARY KEY (source_id, event_id)
        );
        INSERT INTO telecom.event_keys
        SELECT DISTINCT ON (source_id, event_id) source_id, event_id, started_at
        FROM telecom.events_raw ORDER BY source_id, event_id, ingested_at;
    END IF;
END $$;

-- The aggregator's record of the events it has counted: an event is added to the
-- aggregates only in the transaction that inserts its key here, so a redelivered or re-sent
-- event is never counted twice. Until 2026-12 it was partitioned by month with started_at in
-- its key; such a table is converted once.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'telecom' AND c.relname = 'agg_applied' AND c.relkind = 'p') THEN
        ALTER TABLE telecom.agg_applied RENAME TO agg_applied_by_month;
        CREATE TABLE telecom.agg_applied (
            source_id  text        NOT NULL,
            event_id   text        NOT NULL,
            started_at timestamptz NOT NULL,
            PRIMARY KEY (source_id, event_id)
        );
        INSERT INTO telecom.agg_applied
        SELECT DISTINCT ON (source_id, event_id) source_id, event_id, started_at
        FROM telecom.agg_applied_by_month ORDER BY source_id, event_id, started_at;
        DROP TABLE telecom.agg_applied_by_month;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS telecom.agg_applied (
    source_id  text        NOT NULL,
    event_id   text        NOT NULL,
    started_at timestamptz NOT NULL,  -- of the counted event (retention)
    PRIMARY KEY (source_id, event_id)
);

CREATE TABLE IF NOT EXISTS telecom.agg_day (
    day          date    NOT NULL,
    user_id      text    NOT NULL,
    type         text    NOT NULL,
    events       bigint  NOT NULL,
    duration_sec bigint  NOT NULL,
    bytes_up     numeric NOT NULL,
    bytes_down   numeric NOT NULL,
    PRIMARY KEY (user_id, day, type)
);

CREATE TABLE IF NOT EXISTS telecom.agg_month (
    month        date    NOT NULL,  -- first day of the month (UTC)
    user_id      text    NOT NULL,
    type         text    NOT NULL,
    events       bigint  NOT NULL,
    duration_sec bigint  NOT NULL,
    bytes_up     numeric NOT NULL,
    bytes_down   numeric NOT NULL,
    PRIMARY KEY (user_id, month, type)
);

-- Global aggregates (all users), kept by the aggregator in the same transaction.
CREATE TABLE IF NOT EXISTS telecom.agg_global_day (
    day          date    NOT NULL,
    type         text    NOT NULL,
    events       bigint  NOT NULL,
    duration_sec bigint  NOT NULL,
    bytes_up     numeric NOT NULL,
    bytes_down   numeric NOT NULL,
    PRIMARY KEY (day, type)
);

CREATE TABLE IF NOT EXISTS telecom.agg_global_month (
    month        date    NOT NULL,
    type         text    NOT NULL,
    events       bigint  NOT NULL,
    duration_sec bigint  NOT NULL,
    bytes_up     numeric NOT NULL,
    bytes_down   numeric NOT NULL,
    PRIMARY KEY (month, type)
);

-- One row: bumped in every aggregator transaction that changed the aggregates. The API's
-- Redis cache is keyed by it, so a change makes every cached answer unreachable.
CREATE TABLE IF NOT EXISTS telecom.agg_state (
    id         smallint    PRIMARY KEY CHECK (id = 1),
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);
INSERT INTO telecom.agg_state VALUES (1, 0, now()) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION telecom.ensure_partitions(months date[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    m       date;
    parent  text;
    part    text;
    created integer := 0;
BEGIN
    -- Serialise creators (several ingestors/aggregators may meet a new month at once).
    PERFORM pg_advisory_xact_lock(hashtext('telecom.ensure_partitions'));
    FOREACH m IN ARRAY months LOOP
        m := date_trunc('month', m)::date;
        FOREACH parent IN ARRAY ARRAY['events_raw'] LOOP
            part := format('%s_y%sm%s', parent, to_char(m, 'YYYY'), to_char(m, 'MM'));
            IF to_regclass(format('telecom.%I', part)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE telecom.%I PARTITION OF telecom.%I FOR VALUES FROM (%L) TO (%L)',
                    part, parent,
                    (m::timestamp AT TIME ZONE 'UTC'),
                    ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END $$;

-- Months ahead: the previous, current and next three months (UTC).
SELECT telecom.ensure_partitions(ARRAY(
    SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => k))::date
    FROM generate_series(-1, 3) AS k));

-- Retention: drop the partitions of months before `keep_from` (a month start) and the keys
-- of those events; returns the dropped partition names. Aggregates are kept.
CREATE OR REPLACE FUNCTION telecom.drop_partitions_before(keep_from date)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('telecom.ensure_partitions'));
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = 'telecom' AND p.relname = 'events_raw'
          AND c.relname ~ '_y[0-9]{4}m[0-9]{2}$'
          AND make_date(substring(c.relname from '_y([0-9]{4})m')::int,
                        substring(c.relname from 'm([0-9]{2})$')::int, 1) < keep_from
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE telecom.%I', r.relname);
        RETURN NEXT r.relname;
    END LOOP;
    DELETE FROM telecom.event_keys WHERE started_at < (keep_from::timestamp AT TIME ZONE 'UTC');
    DELETE FROM telecom.agg_applied WHERE started_at < (keep_from::timestamp AT TIME ZONE 'UTC');
END $$;
