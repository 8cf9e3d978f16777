"""UGC traffic for the generator: what the collector would publish (``UgcRecord`` JSON keyed
by user_id) for every kind, with realistic page-view pairs.

Page views keep per-user state: a start is emitted now and its end is queued to come a few
events later; some ends come before their start (a slow collector), some never come (the
tab was closed), and some halves are sent twice (a client retry: a new event_id, the first
one wins). ``truth`` on each page-view half lets a test recompute the expected page views.
Exact re-sends of a record are the engine's job (duplicate share).
"""

from __future__ import annotations

import heapq
import random
import uuid

import orjson

from clickflow.domains.ugc.config import UgcConfig
from clickflow.generator.factory import GeneratedEvent
from clickflow.kafka.topics import TopicSpec

ELEMENTS = ("movie", "trailer", "category", "actor", "navigation", "banner")
PAGES = ("movie", "category", "promotion", "recommendations", "search", "main")
QUALITIES = (240, 360, 480, 720, 1080, 1440, 2160)
FILTERS = ("genre", "rating", "actor", "year", "country", "director")
GENRES = ("drama", "comedy", "thriller", "horror", "documentary", "anime", "sci-fi")
WORDS = ("star", "love", "war", "night", "city", "dream", "ghost", "king", "road", "sea")


class UgcEventFactory:
    breakages = (
        "malformed_json",
        "unknown_event",
        "empty_user_id",
        "bad_quality",
        "empty_page_view_id",
        "wrong_type",
        "unknown_field",
        "seconds_timestamp",
    )

    def __init__(
        self,
        users: int = 8000,
        videos: int = 2000,
        missing_end_share: float = 0.05,
        end_first_share: float = 0.05,
        resend_share: float = 0.03,
        max_end_delay: int = 200,  # events between a start and its end
        topic: str | None = None,
        partitions: int | None = None,
        seed: int = 7,
    ) -> None:
        cfg = UgcConfig()
        self.topic = TopicSpec(topic or cfg.topic, partitions or cfg.partitions)
        ids = random.Random(seed)
        self.users = [str(uuid.UUID(int=ids.getrandbits(128), version=4)) for _ in range(users)]
        self.videos = [f"v{n:05d}" for n in range(videos)]
        self.missing_end_share = missing_end_share
        self.end_first_share = end_first_share
        self.resend_share = resend_share
        self.max_end_delay = max_end_delay
        self._seq = 0
        self._queued: list[tuple[int, int, GeneratedEvent]] = []  # (due seq, tie, event)

    # -- the protocol -------------------------------------------------------------------------

    def valid(self, rng: random.Random, now: float) -> GeneratedEvent:
        self._seq += 1
        if self._queued and self._queued[0][0] <= self._seq:
            return heapq.heappop(self._queued)[2]
        r = rng.random()
        user = self._user(rng)
        ts = int(now * 1000)
        if r < 0.30:
            return self._event(
                "element_click",
                user,
                ts,
                {"element_type": rng.choice(ELEMENTS), "page_type": rng.choice(PAGES)},
            )
        if r < 0.65:
            return self._page_view(rng, user, ts)
        if r < 0.75:
            old, new = rng.sample(QUALITIES, 2)
            return self._event(
                "quality_change",
                user,
                ts,
                {"video_id": rng.choice(self.videos), "old_quality": old, "new_quality": new},
            )
        if r < 0.85:
            return self._event(
                "video_complete",
                user,
                ts,
                {"video_id": rng.choice(self.videos), "duration_total": rng.random() < 0.8},
            )
        picked = rng.sample(FILTERS, rng.randint(1, 3))
        filters = ",".join(
            f"{f}={rng.choice(GENRES) if f == 'genre' else rng.randint(1, 10)}" for f in picked
        )
        return self._event(
            "search_filter",
            user,
            ts,
            {"search_query": " ".join(rng.sample(WORDS, rng.randint(1, 3))), "filters": filters},
        )

    def broken(self, rng: random.Random, now: float, breakage: str) -> GeneratedEvent:
        user = self._user(rng)
        ts = int(now * 1000)
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        rec: dict = {
            "event": "quality_change",
            "event_id": event_id,
            "user_id": user,
            "timestamp": ts,
            "data": {"video_id": rng.choice(self.videos), "old_quality": 720, "new_quality": 1080},
        }
        if breakage == "malformed_json":
            value = orjson.dumps(rec)[:-7]
            return GeneratedEvent(user.encode(), value, event_id, breakage)
        if breakage == "unknown_event":
            rec["event"] = "page_scroll"
        elif breakage == "empty_user_id":
            rec["user_id"] = ""
        elif breakage == "bad_quality":
            rec["data"]["old_quality"] = -1
        elif breakage == "empty_page_view_id":
            rec["event"] = "page_view_start"
            rec["data"] = {"page_view_id": "", "page_type": "movie"}
        elif breakage == "wrong_type":
            rec["data"]["new_quality"] = "1080p"
        elif breakage == "unknown_field":
            rec["data"]["bitrate"] = 5000
        elif breakage == "seconds_timestamp":
            rec["timestamp"] = ts // 1000
        else:
            raise ValueError(f"unknown breakage {breakage!r}")
        return GeneratedEvent(user.encode(), orjson.dumps(rec), event_id, breakage)

    # -- helpers ------------------------------------------------------------------------------

    def _user(self, rng: random.Random) -> str:
        return "anonymous" if rng.random() < 0.05 else rng.choice(self.users)

    def _event(
        self, kind: str, user: str, ts: int, data: dict, event_id: str | None = None
    ) -> GeneratedEvent:
        event_id = event_id or uuid.uuid4().hex
        rec = {"event": kind, "event_id": event_id, "user_id": user, "timestamp": ts, "data": data}
        truth = {"kind": kind, "user_id": user, "ts": ts, **data}
        return GeneratedEvent(user.encode(), orjson.dumps(rec), event_id, None, truth)

    def _later(self, rng: random.Random, ev: GeneratedEvent) -> None:
        due = self._seq + rng.randint(1, self.max_end_delay)
        heapq.heappush(self._queued, (due, id(ev), ev))

    def _page_view(self, rng: random.Random, user: str, now_ms: int) -> GeneratedEvent:
        pvid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        page = rng.choice(PAGES)
        data = {"page_view_id": pvid, "page_type": page}
        duration = rng.randint(500, 600_000)
        r = rng.random()
        if r < self.end_first_share:  # the end overtakes its start
            end = self._event("page_view_end", user, now_ms, data)
            self._later(rng, self._event("page_view_start", user, now_ms - duration, data))
            return end
        start = self._event("page_view_start", user, now_ms, data)
        if r < self.end_first_share + self.missing_end_share:
            return start  # never ends
        end = self._event("page_view_end", user, now_ms + duration, data)
        self._later(rng, end)
        if r < self.end_first_share + self.missing_end_share + self.resend_share:
            # client retries: the same half again under a new event_id (the first one wins)
            again = rng.choice((start, end))
            assert again.truth is not None
            self._later(
                rng,
                self._event(again.truth["kind"], user, again.truth["ts"] + 7, data),
            )
        return start

    def pending(self) -> list[GeneratedEvent]:
        """Queued events not emitted yet (ends, late starts, retries), in due order."""
        return [e for _, _, e in sorted(self._queued)]


def factory(**kwargs: object) -> UgcEventFactory:
    return UgcEventFactory(**kwargs)  # type: ignore[arg-type]
