-- UGC (online cinema): one table per event kind, paired page views, processing errors.
-- Every table takes deduplicated inserts (insert_deduplication_token = the Kafka chunk's
-- offset range), hence non_replicated_deduplication_window. Event tables are
-- ReplacingMergeTree with (event_id, user_id) last in the sorting key: an exact re-send of
-- an event (same event_id from the same user, same server timestamp) collapses, while two
-- users' events with the same client id do not; the API reads them with FINAL.
-- Timestamps are UTC, millisecond precision.

CREATE TABLE IF NOT EXISTS ugc_element_click
(
    event_id String,
    user_id String,
    timestamp DateTime64(3, 'UTC'),
    element_type LowCardinality(String),
    page_type LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (page_type, element_type, timestamp, event_id, user_id)
TTL toDateTime(timestamp) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ugc_page_view
(
    page_view_id String,
    user_id String,
    page_type LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    ended_at Nullable(DateTime64(3, 'UTC')),
    duration_seconds Nullable(Float64),
    paired UInt8
)
-- One row per page view whatever a crash or a concurrent sweep did: the sorting key holds
-- the page view (its start), and a paired row (version 1) replaces an unpaired one (0).
-- Read with FINAL.
ENGINE = ReplacingMergeTree(paired)
PARTITION BY toYYYYMM(started_at)
ORDER BY (page_type, started_at, user_id, page_view_id)
TTL toDateTime(started_at) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ugc_quality_change
(
    event_id String,
    user_id String,
    timestamp DateTime64(3, 'UTC'),
    video_id String,
    old_quality UInt16,
    new_quality UInt16
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (video_id, timestamp, event_id, user_id)
TTL toDateTime(timestamp) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ugc_video_complete
(
    event_id String,
    user_id String,
    timestamp DateTime64(3, 'UTC'),
    video_id String,
    duration_total UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (video_id, timestamp, event_id, user_id)
TTL toDateTime(timestamp) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ugc_search_filter
(
    event_id String,
    user_id String,
    timestamp DateTime64(3, 'UTC'),
    search_query String,
    filters String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (toStartOfHour(timestamp), filters, timestamp, event_id, user_id)
TTL toDateTime(timestamp) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ugc_processing_errors
(
    received_at DateTime64(3, 'UTC') DEFAULT now64(3),
    topic String,
    partition Int32,
    offset Int64,
    event String,
    reason String,
    raw String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, topic, partition, offset)
TTL toDateTime(received_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000;
