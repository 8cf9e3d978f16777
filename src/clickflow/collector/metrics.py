"""Prometheus metrics of the collector (module level: one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "clickflow_collector_requests_total", "Requests to POST /v1/events by HTTP status", ["status"]
)
EVENTS = Counter(
    "clickflow_collector_events_total",
    "Events by kind and verdict (accepted, rejected, failed = not stored)",
    ["kind", "verdict"],
)
LATENCY = Histogram(
    "clickflow_collector_request_seconds",
    "Time to answer POST /v1/events, Kafka acknowledgement included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_ERRORS = Counter(
    "clickflow_collector_publish_errors_total", "Records Kafka did not acknowledge", ["reason"]
)
TOKEN_CHECKS = Counter(
    "clickflow_collector_token_checks_total",
    "Token verifications by source (cache, service, local) and result (valid, invalid)",
    ["source", "result"],
)
RATE_LIMITED = Counter("clickflow_collector_rate_limited_total", "Requests refused with 429")
