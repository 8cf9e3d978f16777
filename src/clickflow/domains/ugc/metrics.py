"""UGC pipeline metrics (seed 001 NFR 6: monitoring of gaps and duplicates)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("clickflow_ugc_events", "Valid UGC events handled", ["kind"])
INVALID = Counter("clickflow_ugc_invalid_events", "UGC records sent to the DLQ")
DUPLICATES = Counter(
    "clickflow_ugc_duplicates_dropped",
    "Duplicate events dropped (page view halves, or re-sent events within a batch)",
    ["kind"],
)
PAIRS = Counter("clickflow_ugc_page_views_paired", "Page views emitted with both halves")
ORPHANS = Counter(
    "clickflow_ugc_orphans_expired",
    "Starts with no end after the max wait (Kafka time), emitted unpaired",
)
ORPHAN_ENDS = Counter(
    "clickflow_ugc_orphan_ends_expired",
    "Ends whose start never came, dropped after the max wait (Kafka time)",
)
LATE_ENDS = Counter(
    "clickflow_ugc_late_ends", "Ends that arrived after their start was emitted unpaired"
)
MISSING = Counter(
    "clickflow_ugc_pairing_state_missing",
    "Waiting page views whose Redis hash was found empty at the end of their wait "
    "(deleted outside clickflow; their halves cannot be emitted)",
)
UNENDED_SHARE = Gauge(
    "clickflow_ugc_page_views_unended_share",
    "Share of page views emitted without an end (orphans / all page views, this process)",
)
PENDING = Gauge("clickflow_ugc_pending_halves", "Page views waiting for their other half")


def update_unended_share() -> None:
    paired = PAIRS._value.get()
    orphans = ORPHANS._value.get()
    total = paired + orphans
    UNENDED_SHARE.set(orphans / total if total else 0.0)
