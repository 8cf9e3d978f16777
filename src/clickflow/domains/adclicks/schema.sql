-- adclicks: raw store (reprocessing, backfill, user_id/ip filters), minute aggregate with the
-- low-cardinality filter dimensions (star schema), per-partition watermarks (finality).
-- Every table written with a chunk token has non_replicated_deduplication_window > 0 so a
-- replayed chunk (exactly-once intent log) is a no-op, including through the view.

-- One row per accepted click, first occurrence of its click_id only (the pipeline dedups).
CREATE TABLE IF NOT EXISTS ad_clicks_raw
(
    click_id String,
    ad_id String,
    click_timestamp Int64 CODEC(Delta, ZSTD),
    user_id String,
    ip String,
    country LowCardinality(String),
    device LowCardinality(String),
    os LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset UInt64,
    ingest_ms Int64 CODEC(Delta, ZSTD),  -- Kafka timestamp of the record
    chunk_hash UInt64,  -- hash of the dedup token the row was first written with
    click_time DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(click_timestamp, 'UTC'),
    INDEX user_idx user_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX ip_idx ip TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX ingest_idx ingest_ms TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(click_time)
ORDER BY (toStartOfHour(click_time), ad_id, click_time)
SETTINGS non_replicated_deduplication_window = 1000;

-- Clicks per ad per minute per (country, device, os). Read with sum(clicks) ... GROUP BY:
-- parts are summed in the background. clicks is signed so `backfill` can insert corrections.
-- Three shapes, the optimizer picks whichever reads fewest granules:
-- * the table (hour first): all ads over the last M minutes, filtered (popular_ads + filter);
-- * by_ad (ad first): one ad over any range (aggregated_count);
-- * per_ad_minute (minute, ad; dimensions summed away): popular_ads without a filter.
CREATE TABLE IF NOT EXISTS ad_clicks_minute
(
    minute DateTime('UTC'),
    ad_id String,
    country LowCardinality(String),
    device LowCardinality(String),
    os LowCardinality(String),
    clicks Int64,
    PROJECTION by_ad (SELECT * ORDER BY ad_id, minute, country, device, os),
    PROJECTION per_ad_minute (SELECT minute, ad_id, sum(clicks) GROUP BY minute, ad_id)
)
ENGINE = SummingMergeTree(clicks)
PARTITION BY toYYYYMMDD(minute)
ORDER BY (toStartOfHour(minute), ad_id, minute, country, device, os)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';

CREATE MATERIALIZED VIEW IF NOT EXISTS ad_clicks_minute_mv TO ad_clicks_minute AS
SELECT
    toStartOfMinute(fromUnixTimestamp64Milli(click_timestamp, 'UTC')) AS minute,
    ad_id,
    country,
    device,
    os,
    toInt64(count()) AS clicks
FROM ad_clicks_raw
GROUP BY minute, ad_id, country, device, os;

-- Per-partition event-time watermark (max event time seen - allowed lateness). Monotone:
-- read with max() ... GROUP BY; merges keep one row per partition.
CREATE TABLE IF NOT EXISTS ad_clicks_watermarks
(
    topic LowCardinality(String),
    kafka_partition UInt16,
    partitions SimpleAggregateFunction(max, UInt16),
    max_event_ms SimpleAggregateFunction(max, Int64),
    watermark_ms SimpleAggregateFunction(max, Int64),
    updated_ms SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (topic, kafka_partition);
