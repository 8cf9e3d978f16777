"""The seed's generator verify mode: send N events (with duplicates), then check that every
unique event is in ``events_raw`` exactly once and that the duplicates were rejected.

Reported like the seed's generator: sent, verified, failed, events/s, success rate and the
average send-to-database latency (``events_raw.ingested_at`` - the time the event was
handed to the producer; same machine clock).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg

from clickflow.config import Settings
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import ensure_topics
from clickflow.stores.postgres import postgres_url


@dataclass
class VerifyReport:
    sent: int  # records sent to Kafka (unique + duplicates)
    unique: int
    duplicates_sent: int
    verified: int  # unique events found in events_raw exactly once
    failed: int  # unique events missing (or stored more than once)
    duplicate_rows: int  # rows beyond one per unique event: must be 0
    send_seconds: float
    events_per_s: float  # send rate
    db_seconds: float  # from the first send until the last event was in the database
    db_events_per_s: float  # unique events stored per second over db_seconds
    success_rate: float  # verified / unique, in %
    avg_latency_ms: float
    p99_latency_ms: float

    def lines(self) -> list[str]:
        return [
            f"events_sent:      {self.sent}  (unique {self.unique}, "
            f"duplicates {self.duplicates_sent})",
            f"events_verified:  {self.verified}",
            f"events_failed:    {self.failed}",
            f"duplicate_rows:   {self.duplicate_rows}",
            f"events_per_sec:   {self.events_per_s:,.0f} sent, "
            f"{self.db_events_per_s:,.0f} stored (over {self.db_seconds:.1f} s)",
            f"success_rate:     {self.success_rate:.2f}%",
            f"avg_latency:      {self.avg_latency_ms:,.0f} ms (p99 {self.p99_latency_ms:,.0f} ms)",
        ]

    def as_dict(self) -> dict:
        return asdict(self)


KEYS_SQL = """
CREATE TEMP TABLE IF NOT EXISTS tc_verify (
    source_id text, event_id text, started_at timestamptz, sent_at double precision
)
"""

CHECK_SQL = """
SELECT count(*) FILTER (WHERE n = 1),
       coalesce(sum(greatest(n - 1, 0)), 0),
       avg(lat) FILTER (WHERE n = 1),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) FILTER (WHERE n = 1),
       max(last_at)
FROM (
    SELECT k.source_id, k.event_id, count(r.event_id) AS n,
           avg(extract(epoch FROM r.ingested_at) - k.sent_at) AS lat,
           max(extract(epoch FROM r.ingested_at)) AS last_at
    FROM tc_verify k
    LEFT JOIN telecom.events_raw r ON r.source_id = k.source_id AND r.event_id = k.event_id
    GROUP BY k.source_id, k.event_id
) s
"""


def run_verify(
    settings: Settings,
    events: int = 10_000,
    duplicate_share: float = 0.1,
    rate: float = 0.0,
    users: int = 1000,
    timeout: float = 60.0,
    seed: int | None = None,
    topic: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Send ``events`` records (``duplicate_share`` of them resends of earlier ones) at
    ``rate``/s (0: as fast as possible), wait up to ``timeout`` s for the ingestor."""
    rng = random.Random(seed if seed is not None else time.time_ns())
    factory = TelecomFactory(users=users, topic=topic, seed=rng.randrange(1 << 30))
    ensure_topics(settings.kafka_bootstrap, [factory.topic])
    producer = EventProducer(producer_config(settings, **{"linger.ms": 5}))
    name = factory.topic.name
    keys: list[tuple[str, str, datetime, float]] = []
    sent = dups = 0
    recent: list = []
    t0 = time.time()
    for i in range(events):
        if rate > 0:
            ahead = t0 + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        if recent and rng.random() < duplicate_share:
            ev = rng.choice(recent)
            dups += 1
        else:
            ev = factory.valid(rng, time.time())
            truth = ev.truth
            assert truth is not None
            started = datetime.fromisoformat(truth["started_at"])
            keys.append((truth["source_id"], truth["event_id"], started, time.time()))
            recent.append(ev)
            if len(recent) > 1000:
                recent.pop(rng.randrange(len(recent)))
        producer.send(name, ev.value, key=ev.key)
        sent += 1
        if progress and sent % 50_000 == 0:
            progress(f"sent {sent}")
    remaining = producer.flush(60)
    send_seconds = time.time() - t0
    failed_sends = remaining
    unique = len(keys)

    with psycopg.connect(postgres_url(settings), autocommit=True) as conn:
        conn.execute(KEYS_SQL)
        conn.execute("TRUNCATE tc_verify")
        with conn.cursor().copy(
            "COPY tc_verify (source_id, event_id, started_at, sent_at) FROM STDIN"
        ) as copy:
            for k in keys:
                copy.write_row(k)
        conn.execute("ANALYZE tc_verify")
        deadline = time.time() + timeout
        while True:
            row = conn.execute(CHECK_SQL).fetchone()
            assert row is not None
            verified, extra, avg_lat, p99_lat, last_at = row
            if progress:
                progress(f"verified {verified}/{unique}")
            if verified >= unique or time.time() > deadline:
                break
            time.sleep(0.5)
    verified = int(verified or 0)
    db_seconds = (float(last_at) - t0) if last_at else 0.0
    return VerifyReport(
        sent=sent - failed_sends,
        unique=unique,
        duplicates_sent=dups,
        verified=verified,
        failed=unique - verified,
        duplicate_rows=int(extra or 0),
        send_seconds=send_seconds,
        events_per_s=sent / send_seconds if send_seconds else 0.0,
        db_seconds=db_seconds,
        db_events_per_s=verified / db_seconds if db_seconds > 0 else 0.0,
        success_rate=100.0 * verified / unique if unique else 100.0,
        avg_latency_ms=float(avg_lat or 0) * 1000,
        p99_latency_ms=float(p99_lat or 0) * 1000,
    )
