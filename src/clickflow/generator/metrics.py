"""The generator's counters (``Stats``, the ack-latency histogram) and their Prometheus
export (``/metrics``), shared by the engine and the worker pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Measured(Protocol):
    """What the metrics export reads: an engine, or a pool of worker processes."""

    domain: str
    stats: Stats
    latency_counts: list[int]  # per LATENCY_BUCKETS bound, then one for +Inf
    latency_sum: float


class _EngineCollector:
    """Exports every engine's counters and ack-latency histogram at scrape time.

    Counting in plain ints and exporting on scrape keeps the per-event cost at a few
    hundred nanoseconds (prometheus_client's own inc/observe cost ~2 us per event)."""

    def __init__(self) -> None:
        self.engines: list[Measured] = []

    def collect(self):
        counters = {
            name: CounterMetricFamily(f"clickflow_generator_{name}", help_, labels=["domain"])
            for name, help_ in (
                ("sent", "Records handed to the producer"),
                ("acked", "Records acknowledged by the broker"),
                ("failed", "Deliveries that failed"),
                ("retried", "Records re-sent after a failure"),
            )
        }
        hist = HistogramMetricFamily(
            "clickflow_generator_ack_latency_seconds", "Send-to-ack latency", labels=["domain"]
        )
        for e in list(self.engines):
            for name, fam in counters.items():
                fam.add_metric([e.domain], getattr(e.stats, name))
            acc, buckets = 0, []
            for bound, n in zip(LATENCY_BUCKETS, e.latency_counts, strict=False):
                acc += n
                buckets.append((str(bound), acc))
            buckets.append(("+Inf", acc + e.latency_counts[-1]))
            hist.add_metric([e.domain], buckets, e.latency_sum)
        yield from counters.values()
        yield hist


_COLLECTOR = _EngineCollector()
REGISTRY.register(_COLLECTOR)


def export_metrics(source: Measured) -> None:
    """Include ``source`` in the Prometheus export (``/metrics``)."""
    _COLLECTOR.engines.append(source)


def stop_exporting(source: Measured) -> None:
    if source in _COLLECTOR.engines:
        _COLLECTOR.engines.remove(source)


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    retried: int = 0
    valid: int = 0
    broken: int = 0
    duplicates: int = 0
    started: float = field(default_factory=time.monotonic)
    #: When the run ended (after its final flush): the rate of a finished run stays put.
    ended: float | None = None

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The sum of several engines' counters, started when the first one started."""
        out = cls()
        for name in ("sent", "acked", "failed", "retried", "valid", "broken", "duplicates"):
            setattr(out, name, sum(getattr(s, name) for s in parts))
        if parts:
            out.started = min(s.started for s in parts)
            if all(s.ended is not None for s in parts):
                out.ended = max(s.ended for s in parts)  # type: ignore[type-var]
        return out

    @property
    def generated(self) -> int:
        return self.valid + self.broken + self.duplicates

    def rate(self) -> float:
        elapsed = (self.ended or time.monotonic()) - self.started
        return self.acked / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "retried": self.retried,
            "valid": self.valid,
            "broken": self.broken,
            "duplicates": self.duplicates,
            "acked_per_s": round(self.rate(), 1),
        }


def latency_quantile(latency_counts: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile of ack latency."""
    total = sum(latency_counts)
    if not total:
        return None
    acc = 0
    for bound, n in zip(LATENCY_BUCKETS, latency_counts, strict=False):
        acc += n
        if acc >= q * total:
            return bound
    return float("inf")
