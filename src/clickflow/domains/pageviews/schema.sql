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
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 10000;

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
SETTINGS non_replicated_deduplication_window = 10000;

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
SETTINGS non_replicated_deduplication_window = 10000;

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
SETTINGS non_replicated_deduplication_window = 10000;

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
