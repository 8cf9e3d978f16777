"""The adclicks domain: ad click aggregation (seed 002, "System Design Interview" vol. 2).

Flow: clicks (``events.AdClick``) -> Kafka topic ``adclicks`` (4 partitions, keyed by
click_id) -> ``pipeline.AdClicksHandler`` -> ClickHouse ``ad_clicks_raw`` -> materialized
view -> ``ad_clicks_minute`` (minute buckets per ad x country x device x os) -> ``api``.

Decisions, and why:

* **Key = click_id, not ad_id** (the book partitions by ad_id). Dedup needs every copy of a
  click on one partition, and click_id gives that directly; ad_id would too, but a few hot
  ads (Zipf) would make one partition hot. Per-ad locality is not needed: ClickHouse sums
  partial counts from any partition (SummingMergeTree).
* **Dedup** by click_id in the consumer (``claims``): each click_id is claimed in Redis by
  the first record carrying it (owner = its Kafka coordinates), in hashes per bucket of
  Kafka time. Exact for copies up to ``dedup_window_s`` (24 h) apart, across restarts and
  consumers. The raw store holds the first copy only; ``clickflow adclicks backfill``
  (also on a schedule, ``--every 1h``) recounts distinct click_ids and reports differences.
* **Exactly once**: the framework's intent log + one insert per partition chunk with the
  chunk's deduplication token; the view is filled in the same insert
  (``deduplicate_blocks_in_dependent_materialized_views``). A replayed chunk is rewritten
  with its token so a crash between the raw part and the view's part heals itself.
* **Event time + watermark** (``watermark``): per partition, max click time - allowed
  lateness (default 15 s), never past processing time - allowed lateness, persisted. A
  minute is final when the smallest watermark over all partitions passed its end; the API
  reports ``final_through``. Late clicks are not dropped: they are written, correct their
  minute, and are counted (``clickflow_adclicks_late_events``). Clicks more than
  ``max_future_s`` (300 s) ahead of their record's Kafka timestamp go to the DLQ: a verdict
  that is the same when the record is replayed.
* **Filters**: country/device/os are dimensions of the minute aggregate (star schema);
  user_id/ip are answered from the raw store (bloom-filter skip indexes), and the answer
  says ``"source": "raw"``.

Settings: ``CLICKFLOW_ADCLICKS_*`` (``config.AdClicksConfig``).
"""
