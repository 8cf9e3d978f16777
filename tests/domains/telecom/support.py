"""Telecom test support: build events with a known ground truth, feed batches straight to
the handlers, read what PostgreSQL holds."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from confluent_kafka import Message

from clickflow.config import Settings
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.kafka.batch import Batch, Chunk


def with_database(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def pg(settings: Settings) -> psycopg.Connection:
    assert settings.postgres_url
    return psycopg.connect(settings.postgres_url, autocommit=True)


class Truth:
    """Unique events and the aggregates computed from them in Python."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict] = {}

    def add(self, e: dict) -> None:
        self.events[(e["source_id"], e["event_id"])] = e

    def _sums(self, key_fn) -> dict:
        out: dict = defaultdict(lambda: [0, 0, 0, 0])
        for e in self.events.values():
            s = out[key_fn(e)]
            s[0] += 1
            s[1] += e["duration_sec"]
            s[2] += e["bytes_up"]
            s[3] += e["bytes_down"]
        return {k: tuple(v) for k, v in out.items()}

    def day(self, e: dict) -> str:
        return e["started_at"][:10]

    def month(self, e: dict) -> str:
        return e["started_at"][:7] + "-01"

    def agg_day(self) -> dict:
        return self._sums(lambda e: (e["user_id"], self.day(e), e["type"]))

    def agg_month(self) -> dict:
        return self._sums(lambda e: (e["user_id"], self.month(e), e["type"]))

    def global_day(self) -> dict:
        return self._sums(lambda e: (self.day(e), e["type"]))

    def global_month(self) -> dict:
        return self._sums(lambda e: (self.month(e), e["type"]))


def make_events(
    n: int, start: datetime, span: timedelta, users: int = 50, seed: int = 1
) -> list[dict]:
    """``n`` valid events starting uniformly in [start, start + span)."""
    rng = random.Random(seed)
    f = TelecomFactory(users=users, seed=seed)
    out = []
    for _ in range(n):
        at = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        out.append(f.make(rng, at.replace(microsecond=0)))
    return out


def with_duplicates(events: list[dict], share: float, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    out = list(events)
    for _ in range(int(len(events) * share)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(events))
    return out


def batch_of(values: list[bytes], topic: str = "t", group: str = "g") -> Batch:
    msgs = [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=v) for i, v in enumerate(values)
    ]
    return Batch(group, [Chunk(topic, 0, 0, len(msgs) - 1, msgs)])


def encode_all(events: list[dict]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def read_aggregates(settings: Settings) -> dict[str, dict]:
    with pg(settings) as conn:

        def rows(sql: str) -> dict:
            return {
                tuple(str(x) for x in r[:-4]): tuple(int(x) for x in r[-4:])
                for r in conn.execute(sql).fetchall()
            }

        return {
            "agg_day": rows(
                "SELECT user_id, day, type, events, duration_sec, bytes_up, bytes_down "
                "FROM telecom.agg_day"
            ),
            "agg_month": rows(
                "SELECT user_id, month, type, events, duration_sec, bytes_up, bytes_down "
                "FROM telecom.agg_month"
            ),
            "global_day": rows(
                "SELECT day, type, events, duration_sec, bytes_up, bytes_down "
                "FROM telecom.agg_global_day"
            ),
            "global_month": rows(
                "SELECT month, type, events, duration_sec, bytes_up, bytes_down "
                "FROM telecom.agg_global_month"
            ),
        }


def expected_aggregates(truth: Truth) -> dict[str, dict]:
    return {
        "agg_day": truth.agg_day(),
        "agg_month": truth.agg_month(),
        "global_day": truth.global_day(),
        "global_month": truth.global_month(),
    }


def raw_keys(settings: Settings) -> list[tuple[str, str]]:
    with pg(settings) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute("SELECT source_id, event_id FROM telecom.events_raw").fetchall()
        ]
