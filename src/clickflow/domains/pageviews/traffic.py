"""Page-view traffic: a skewed user/page population, real user agents, IPv4 and IPv6."""

from __future__ import annotations

import random
from bisect import bisect_left
from datetime import UTC, datetime

import orjson

from clickflow.domains.pageviews.events import PAGEVIEWS_TOPIC, event_identity
from clickflow.generator.factory import GeneratedEvent
from clickflow.kafka.topics import TopicSpec

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
]
REGIONS = [
    "eu-west",
    "eu-central",
    "us-east",
    "us-west",
    "ap-south",
    "ap-east",
    "sa-east",
    "af-south",
    "me-central",
    "ru-central",
]
SECTIONS = ["home", "catalog", "product", "blog", "search", "cart", "help", "account"]


class PageViewFactory:
    topic = TopicSpec(PAGEVIEWS_TOPIC, 4)
    breakages = ("empty_page_id", "negative_duration", "malformed_json")

    def __init__(
        self,
        users: int = 5000,
        pages: int = 500,
        bounce_share: float = 0.10,
        seed: int = 7,
        topic: str = PAGEVIEWS_TOPIC,
    ) -> None:
        rng = random.Random(seed)
        self.topic = TopicSpec(topic, 4)
        self.users = [f"u{rng.getrandbits(48):012x}" for _ in range(users)]
        self.pages = [f"/{rng.choice(SECTIONS)}/{i}" for i in range(pages)]
        # Zipf-like skew: a few pages and users get most of the traffic.
        self.page_weights = _cumulative([1 / (i + 1) ** 1.1 for i in range(pages)])
        self.user_weights = _cumulative([1 / (i + 1) ** 0.8 for i in range(users)])
        self.bounce_share = bounce_share
        self.ips = [_ip(rng) for _ in range(2000)]
        self._ts_cache: tuple[float, str] = (-1.0, "")

    def _timestamp(self, now: float) -> str:
        # The engine stamps a whole tick with one wall time: format it once.
        if self._ts_cache[0] != now:
            ts = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
            self._ts_cache = (now, ts.replace("+00:00", "Z"))
        return self._ts_cache[1]

    def _fields(self, rng: random.Random, now: float) -> dict:
        r = rng.random  # plain floats: this runs 100k+ times a second
        page = self.pages[bisect_left(self.page_weights, r())]
        user = self.users[bisect_left(self.user_weights, r())]
        bounce = r() < self.bounce_share
        duration = 200 + int(r() * 4800) if bounce else 10_000 + int(r() * 590_001)
        return {
            "page_id": page,
            "user_id": user,
            "view_duration_ms": duration,
            "timestamp": self._timestamp(now),
            "user_agent": USER_AGENTS[int(r() * len(USER_AGENTS))],
            "ip_address": self.ips[int(r() * len(self.ips))],
            "region": REGIONS[int(r() * len(REGIONS))],
            "is_bounce": bounce,
        }

    def valid(self, rng: random.Random, now: float) -> GeneratedEvent:
        f = self._fields(rng, now)
        value = orjson.dumps(f)
        minute = int(now // 60 * 60)
        return GeneratedEvent(
            key=f["page_id"].encode(),
            value=value,
            identity=event_identity(value),
            truth={
                "page": f["page_id"],
                "user": f["user_id"],
                "ms": f["view_duration_ms"],
                "bounce": f["is_bounce"],
                "minute": minute,
            },
        )

    def broken(self, rng: random.Random, now: float, breakage: str) -> GeneratedEvent:
        f = self._fields(rng, now)
        if breakage == "empty_page_id":
            f["page_id"] = ""
            value = orjson.dumps(f)
        elif breakage == "negative_duration":
            f["view_duration_ms"] = -rng.randint(1, 100_000)
            value = orjson.dumps(f)
        elif breakage == "malformed_json":
            value = orjson.dumps(f)[: rng.randint(5, 60)]
        else:
            raise ValueError(f"unknown breakage {breakage!r}")
        return GeneratedEvent(
            key=f["page_id"].encode() or None,
            value=value,
            identity=event_identity(value),
            broken=breakage,
        )


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.25:
        groups = [rng.randint(0, 0xFFFF) for _ in range(6)]
        return "2001:db8:" + ":".join(f"{g:x}" for g in groups)
    return (
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )
