"""Prometheus metrics of the adclicks pipeline (served on /metrics of the process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CLICKS = Counter("clickflow_adclicks_clicks", "Clicks accepted and counted (first copy)")
DUPLICATES = Counter("clickflow_adclicks_duplicates", "Copies of an already counted click_id")
REPLAYS = Counter(
    "clickflow_adclicks_replays",
    "Records read again after a crash or rebalance whose click was already written",
)
LATE = Counter(
    "clickflow_adclicks_late_events",
    "Clicks older than their partition's watermark (counted anyway: they correct aggregates)",
)
LATE_AFTER_FINAL = Counter(
    "clickflow_adclicks_late_after_final",
    "Late clicks whose minute had already been reported final",
)
REJECTED = Counter("clickflow_adclicks_rejected", "Records sent to the DLQ", ["reason"])
CONSUMER_LAG = Gauge(
    "clickflow_adclicks_consumer_lag_seconds",
    "Processing time minus the Kafka timestamp of the last record handled",
    ["partition"],
)
WATERMARK_DELAY = Gauge(
    "clickflow_adclicks_watermark_delay_seconds",
    "Processing time minus the partition's event-time watermark",
    ["partition"],
)
FINAL_DELAY = Gauge(
    "clickflow_adclicks_final_delay_seconds",
    "Processing time minus the end of the last final minute (min watermark over partitions)",
)
RECONCILE_RUNS = Counter("clickflow_adclicks_reconcile_runs", "Reconciliations (backfill) run")
RECONCILE_DIFFERENCES = Gauge(
    "clickflow_adclicks_reconcile_differences",
    "Minute buckets whose aggregate differed from the raw store in the last reconciliation",
)
RECONCILE_CLICKS_OFF = Gauge(
    "clickflow_adclicks_reconcile_clicks_off",
    "Clicks by which the minute aggregate differed from the raw store in the last run",
)
RECONCILE_UNSTABLE = Gauge(
    "clickflow_adclicks_reconcile_unstable",
    "Buckets the last run left alone because live writes changed them between its two reads",
)
RECONCILE_CORRECTED = Counter(
    "clickflow_adclicks_reconcile_corrected_clicks", "Clicks corrected by reconciliations"
)
RECONCILE_LAST = Gauge(
    "clickflow_adclicks_reconcile_last_success_seconds",
    "Unix time of the last finished reconciliation",
)
