"""Synthetic telecom usage for the traffic engine, the tests and the bench.

A population of subscribers (phone-number user ids) with a per-user activity weight, a few
source systems (switches / packet gateways), and realistic shapes: call durations are
log-normal around a minute and a half, data sessions last minutes and move megabytes
(download ~10x upload), SMS have no duration and no bytes. Keys are user ids, so one
user's events stay in one partition.
"""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from clickflow.domains.telecom.config import telecom_config
from clickflow.domains.telecom.events import EventType
from clickflow.generator.factory import GeneratedEvent
from clickflow.kafka.topics import TopicSpec

TYPE_WEIGHTS = (
    (EventType.DATA, 0.35),
    (EventType.CALL_OUT, 0.2),
    (EventType.CALL_IN, 0.2),
    (EventType.SMS_SENT, 0.13),
    (EventType.SMS_RECEIVED, 0.12),
)
SOURCES = ("provider-1", "provider-2", "provider-3")
CELLS = tuple(f"{c}{n}" for c in "ABCDEFGH" for n in range(1, 9))


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class TelecomFactory:
    breakages = ("malformed_json", "negative_duration", "missing_field", "bad_type", "ended_early")

    def __init__(
        self, users: int = 1000, topic: str | None = None, seed: int = 4, partitions: int = 0
    ) -> None:
        opts = telecom_config()
        self.topic = TopicSpec(topic or opts.topic, partitions or opts.partitions)
        rng = random.Random(seed)
        self.users = [f"7{rng.randrange(900_000_0000, 999_999_9999)}" for _ in range(users)]
        # Pareto-like activity: a few heavy users, a long tail of light ones.
        self._weights = [rng.paretovariate(1.5) for _ in range(users)]
        self._cum = []
        total = 0.0
        for w in self._weights:
            total += w
            self._cum.append(total)
        self._types = [t for t, _ in TYPE_WEIGHTS]
        self._type_cum = []
        acc = 0.0
        for _, w in TYPE_WEIGHTS:
            acc += w
            self._type_cum.append(acc)

    # -- building blocks ---------------------------------------------------------------------

    def _user(self, rng: random.Random) -> str:
        x = rng.random() * self._cum[-1]
        lo, hi = 0, len(self._cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.users[lo]

    def _type(self, rng: random.Random) -> EventType:
        x = rng.random()
        for t, c in zip(self._types, self._type_cum, strict=True):
            if x < c:
                return t
        return self._types[-1]

    @staticmethod
    def _shape(rng: random.Random, kind: EventType) -> tuple[int, int, int]:
        """(duration_sec, bytes_up, bytes_down) for one event of ``kind``."""
        if kind in (EventType.CALL_OUT, EventType.CALL_IN):
            return min(7200, max(1, int(rng.lognormvariate(math.log(90), 1.0)))), 0, 0
        if kind is EventType.DATA:
            duration = min(86400, max(1, int(rng.lognormvariate(math.log(300), 1.2))))
            down = int(rng.lognormvariate(math.log(5_000_000), 1.5))
            up = int(down * rng.uniform(0.03, 0.2))
            return duration, up, down
        return 0, 0, 0

    def make(
        self,
        rng: random.Random,
        started_at: datetime,
        user_id: str | None = None,
        kind: EventType | None = None,
    ) -> dict:
        """One valid event as a dict (the JSON object sent to Kafka)."""
        kind = kind or self._type(rng)
        duration, up, down = self._shape(rng, kind)
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source_id": rng.choice(SOURCES),
            "user_id": user_id or self._user(rng),
            "type": kind.value,
            "started_at": iso(started_at),
            "ended_at": iso(started_at + timedelta(seconds=duration)),
            "duration_sec": duration,
            "bytes_up": up,
            "bytes_down": down,
            "meta": {"cell": rng.choice(CELLS)},
        }
        return event

    def wrap(self, event: dict, broken: str | None = None, value: bytes | None = None):
        return GeneratedEvent(
            key=str(event.get("user_id", "")).encode(),
            value=value if value is not None else orjson.dumps(event),
            identity=f"{event.get('source_id')}:{event.get('event_id')}",
            broken=broken,
            truth=None if broken else event,
        )

    # -- EventFactory ------------------------------------------------------------------------

    def valid(self, rng: random.Random, now: float) -> GeneratedEvent:
        # The event is reported when it ends: it started duration (+ a little delay) ago.
        event = self.make(rng, datetime.fromtimestamp(now, UTC))
        span = event["duration_sec"] + rng.randint(0, 5)
        started = datetime.fromtimestamp(now - span, UTC).replace(microsecond=0)
        event["started_at"] = iso(started)
        event["ended_at"] = iso(started + timedelta(seconds=event["duration_sec"]))
        return self.wrap(event)

    def broken(self, rng: random.Random, now: float, breakage: str) -> GeneratedEvent:
        event = self.valid(rng, now).truth
        assert event is not None
        if breakage == "malformed_json":
            return self.wrap(event, breakage, orjson.dumps(event)[:-7] + b",,")
        if breakage == "negative_duration":
            event["duration_sec"] = -rng.randint(1, 600)
        elif breakage == "missing_field":
            del event[rng.choice(("event_id", "user_id", "type", "started_at", "ended_at"))]
        elif breakage == "bad_type":
            choice = rng.randrange(3)
            if choice == 0:
                event["type"] = "MMS"
            elif choice == 1:
                event["bytes_down"] = "lots"
            else:
                event["started_at"] = 1234567890
        elif breakage == "ended_early":
            started = datetime.fromisoformat(event["started_at"])
            event["ended_at"] = iso(started - timedelta(seconds=rng.randint(1, 3600)))
        else:
            raise ValueError(f"unknown breakage {breakage!r}; known: {self.breakages}")
        return self.wrap(event, breakage)


def factory(**kwargs: object) -> TelecomFactory:
    """The factory the traffic engine uses for ``--domain telecom``."""
    return TelecomFactory(**kwargs)  # type: ignore[arg-type]
