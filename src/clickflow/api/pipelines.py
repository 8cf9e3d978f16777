"""Pipeline health for the dashboard: the Prometheus samples of this process, as JSON."""

from __future__ import annotations

import time
from collections import defaultdict

from fastapi import APIRouter, Depends
from prometheus_client import REGISTRY

from clickflow.api.deps import require_token
from clickflow.kafka.dlq import recent_dead_letters

router = APIRouter(
    prefix="/v1/pipelines", tags=["pipelines"], dependencies=[Depends(require_token)]
)

PER_PIPELINE = {
    "clickflow_consumer_records_total": "records_in",
    "clickflow_consumer_batches_total": "batches",
    "clickflow_consumer_dlq_records_total": "dead_letters",
    "clickflow_consumer_retries_total": "retries",
    "clickflow_consumer_sink_down": "sink_down",
}


@router.get("/stats", summary="Counters of every pipeline in this process, and domain metrics")
def stats() -> dict:
    """Counters are totals since start; the dashboard turns them into rates."""
    pipelines: dict[str, dict] = defaultdict(lambda: {"lag": 0, "partitions": {}})
    domain_metrics: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in PER_PIPELINE and "pipeline" in labels:
                pipelines[labels["pipeline"]][PER_PIPELINE[name]] = value
            elif name == "clickflow_consumer_lag":
                p = pipelines[labels["pipeline"]]
                p["lag"] += value
            elif name == "clickflow_consumer_last_offset":
                p = pipelines[labels["pipeline"]]
                p["partitions"][f"{labels['topic']}/{labels['partition']}"] = value
            elif (
                name.startswith("clickflow_")
                and not name.endswith(("_created", "_bucket"))
                and not name.startswith(("clickflow_consumer_", "clickflow_generator_"))
            ):
                key = name + "".join(f"{{{k}={v}}}" for k, v in sorted(labels.items()))
                domain_metrics[key] = value
    return {
        "time": time.time(),
        "pipelines": dict(pipelines),
        "recent_dead_letters": recent_dead_letters(),
        "metrics": domain_metrics,
    }
