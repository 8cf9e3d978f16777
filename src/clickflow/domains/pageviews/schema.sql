-- Page views (seed 000), ClickHouse. Idempotent: applied at every start-up.
--
-- Differences from the seed, and why:
-- * event_date defaults to toDate(event_time), not today(): a late event belongs to the day
--   it happened, and TTL/partitioning follow event time.
-- * event_id (the content hash of the record, see events.py) is stored so duplicates can be
--   audited; the pipeline drops re-sent duplicates before they are inserted.
-- * Every table has non_replicated_deduplication_window: inserts carry a deterministic token
--   per Kafka offset range, so a replayed range after a crash is dropped as a duplicate block
--   (and, with deduplicate_blocks_in_dependent_materialized_views=1, so are the rollup blocks).
-- * unique_users uses uniqExact: uniq is an estimate (exact only for small sets, with hash
--   collisions possible); analytics that bill need exact counts.
-- * The hourly table is NOT the seed's SummingMergeTree of averages and unique counts:
--   summing averages or unique counts of parts gives wrong answers (avg(a,b) != a+b, and a
--   user seen in two minutes would be counted twice). It keeps the same aggregate STATES as
--   the minute table, merged from the minute states (sumMergeState / uniqExactMergeState),
--   so hourly views, average duration, unique users and bounce rate are exact:
--   avg = sumMerge(total_duration) / sumMerge(view_count), rate = bounces / views.
-- * min_bytes_for_full_part_storage = 10 MB: a part smaller than that (every insert's part,
--   and the first merges) is one file, data.packed, instead of a directory of ~13 files.
--   Each insert makes a part in three tables, and chDB removes merged-away parts at once
--   (old_parts_lifetime = 0), so the pipeline creates and deletes thousands of files a
--   minute. On this machine's ext4 (no journal) each file creation skips every inode deleted
--   in the last minute or more, one buffer lookup each: that took a quarter of the
--   pipeline's CPU and made every run slower than the one before (docs/design.md).
--   Tables made before this setting get it from the ALTERs at the end.

CREATE TABLE IF NOT EXISTS page_views_raw
(
    event_date      Date DEFAULT toDate(event_time),
    event_time      DateTime64(3, 'UTC'),
    page_id         String,
    user_id         String,
    duration_ms     UInt32,
    user_agent      String,
    ip_address      IPv6,
    region          LowCardinality(String),
    is_bounce       UInt8,
    event_id        String,
    kafka_offset    Int64,
    kafka_partition Int32,
    processed_time  DateTime DEFAULT now()
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, page_id, user_id)
TTL event_date + INTERVAL 30 DAY
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 10000,
    min_bytes_for_full_part_storage = 10485760;

CREATE TABLE IF NOT EXISTS page_views_agg_minute
(
    window_start   DateTime('UTC'),
    page_id        String,
    view_count     AggregateFunction(sum, UInt64),
    total_duration AggregateFunction(sum, UInt64),
    unique_users   AggregateFunction(uniqExact, String),
    bounce_count   AggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, page_id)
TTL window_start + INTERVAL 7 DAY
SETTINGS non_replicated_deduplication_window = 10000,
    min_bytes_for_full_part_storage = 10485760;

CREATE TABLE IF NOT EXISTS page_views_agg_hour
(
    window_start   DateTime('UTC'),
    page_id        String,
    view_count     AggregateFunction(sum, UInt64),
    total_duration AggregateFunction(sum, UInt64),
    unique_users   AggregateFunction(uniqExact, String),
    bounce_count   AggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, page_id)
TTL window_start + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 10000,
    min_bytes_for_full_part_storage = 10485760;

CREATE TABLE IF NOT EXISTS processing_errors
(
    error_time      DateTime,
    raw_message     String,
    error_reason    String,
    kafka_offset    Int64,
    kafka_partition Int32
) ENGINE = MergeTree()
ORDER BY (error_time)
TTL error_time + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 10000,
    min_bytes_for_full_part_storage = 10485760;

CREATE MATERIALIZED VIEW IF NOT EXISTS page_views_raw_to_minute
TO page_views_agg_minute
AS
SELECT
    toStartOfMinute(event_time) AS window_start,
    page_id,
    sumState(toUInt64(1)) AS view_count,
    sumState(toUInt64(duration_ms)) AS total_duration,
    uniqExactState(user_id) AS unique_users,
    sumState(toUInt64(is_bounce)) AS bounce_count
FROM page_views_raw
GROUP BY window_start, page_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS page_views_minute_to_hour
TO page_views_agg_hour
AS
SELECT
    toStartOfHour(window_start) AS window_start,
    page_id,
    sumMergeState(view_count) AS view_count,
    sumMergeState(total_duration) AS total_duration,
    uniqExactMergeState(unique_users) AS unique_users,
    sumMergeState(bounce_count) AS bounce_count
FROM page_views_agg_minute
GROUP BY window_start, page_id;

-- Tables created by an earlier version: packed small parts too (see the top of this file).
ALTER TABLE page_views_raw MODIFY SETTING min_bytes_for_full_part_storage = 10485760;
ALTER TABLE page_views_agg_minute MODIFY SETTING min_bytes_for_full_part_storage = 10485760;
ALTER TABLE page_views_agg_hour MODIFY SETTING min_bytes_for_full_part_storage = 10485760;
ALTER TABLE processing_errors MODIFY SETTING min_bytes_for_full_part_storage = 10485760;
