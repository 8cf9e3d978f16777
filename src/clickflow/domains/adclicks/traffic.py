"""Ad-click traffic for the generator: a Zipf-like ad population (a few hot ads take most
clicks), realistic country/device/os mixes, late clicks and broken records.

Duplicates are the engine's job (it re-sends the same record, same key); the key is the
click_id, so every copy lands on the partition of the original.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from itertools import accumulate

import orjson

from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.generator.factory import GeneratedEvent
from clickflow.kafka.topics import TopicSpec

COUNTRIES = {
    "US": 28, "IN": 12, "BR": 8, "DE": 7, "GB": 7, "FR": 6, "JP": 6, "CA": 4, "MX": 4,
    "ID": 4, "IT": 3, "ES": 3, "KR": 2, "AU": 2, "NL": 2, "PL": 1, "TR": 1,
}  # fmt: skip
DEVICES = {"mobile": 62, "desktop": 30, "tablet": 6, "tv": 1, "other": 1}
OS_BY_DEVICE = {
    "mobile": {"android": 70, "ios": 29, "other": 1},
    "tablet": {"ios": 55, "android": 44, "other": 1},
    "desktop": {"windows": 70, "macos": 22, "linux": 7, "other": 1},
    "tv": {"android": 60, "linux": 30, "other": 10},
    "other": {"other": 1},
}


class _Weighted:
    def __init__(self, weights: dict[str, float]) -> None:
        self.values = list(weights)
        total = sum(weights.values())
        self.cum = list(accumulate(w / total for w in weights.values()))
        self.cum[-1] = 1.0

    def pick(self, r: float) -> str:
        return self.values[bisect_left(self.cum, r)]


def zipf_cumulative(n: int, s: float) -> list[float]:
    cum = list(accumulate(1 / (i + 1) ** s for i in range(n)))
    total = cum[-1]
    out = [c / total for c in cum]
    out[-1] = 1.0
    return out


class AdClickFactory:
    breakages = (
        "malformed_json",
        "missing_ad_id",
        "empty_click_id",
        "bad_country",
        "seconds_timestamp",
        "future_timestamp",
        "unknown_device",
        "wrong_type",
    )

    def __init__(
        self,
        ads: int = 10_000,
        users: int = 200_000,
        zipf_s: float = 1.1,
        late_share: float = 0.05,
        late_delay_s: tuple[float, float] = (5.0, 180.0),
        jitter_s: float = 1.5,
        topic: str | None = None,
        partitions: int | None = None,
        seed: int = 11,
    ) -> None:
        if not 0.0 <= late_share <= 1.0:
            raise ValueError("late_share must be between 0 and 1")
        cfg = AdClicksConfig()
        self.topic = TopicSpec(topic or cfg.topic, partitions or cfg.partitions)
        rng = random.Random(seed)
        ids = [f"ad-{i:06d}" for i in range(ads)]
        rng.shuffle(ids)  # the hot ads are not simply the first ids
        self.ads = ids
        self.ad_cum = zipf_cumulative(ads, zipf_s)
        self.users = users
        self.user_cum = zipf_cumulative(min(users, 50_000), 0.7)
        self.ips = [_ip(rng) for _ in range(20_000)]
        self.countries = _Weighted(COUNTRIES)
        self.devices = _Weighted(DEVICES)
        self.oses = {d: _Weighted(w) for d, w in OS_BY_DEVICE.items()}
        self.late_share = late_share
        self.late_delay_s = late_delay_s
        self.jitter_s = jitter_s

    def hot_ads(self, n: int) -> list[str]:
        """The n most clicked ads by construction (for tests and benchmarks)."""
        return self.ads[:n]

    def fields(self, rng: random.Random, now: float) -> tuple[dict, bool]:
        r = rng.random
        late = r() < self.late_share
        if late:
            lo, hi = self.late_delay_s
            delay = lo + r() * (hi - lo)
        else:
            delay = r() * self.jitter_s
        u = bisect_left(self.user_cum, r())
        device = self.devices.pick(r())
        return {
            "click_id": f"{rng.getrandbits(96):024x}",
            "ad_id": self.ads[bisect_left(self.ad_cum, r())],
            "click_timestamp": int((now - delay) * 1000),
            "user_id": f"user-{u:06d}",
            "ip": self.ips[(u * 7919 + int(r() * 3)) % len(self.ips)],
            "country": self.countries.pick(r()),
            "device": device,
            "os": self.oses[device].pick(r()),
        }, late

    def valid(self, rng: random.Random, now: float) -> GeneratedEvent:
        f, late = self.fields(rng, now)
        truth = {k: f[k] for k in ("ad_id", "click_timestamp", "country", "device", "os")}
        truth["user_id"] = f["user_id"]
        truth["ip"] = f["ip"]
        truth["late"] = late
        cid = f["click_id"]
        return GeneratedEvent(cid.encode(), orjson.dumps(f), cid, None, truth)

    def broken(self, rng: random.Random, now: float, breakage: str) -> GeneratedEvent:
        f, _ = self.fields(rng, now)
        cid = f["click_id"]
        if breakage == "malformed_json":
            value = orjson.dumps(f)[: 10 + int(rng.random() * 40)]
        else:
            if breakage == "missing_ad_id":
                del f["ad_id"]
            elif breakage == "empty_click_id":
                f["click_id"] = ""
            elif breakage == "bad_country":
                f["country"] = "usa"
            elif breakage == "seconds_timestamp":
                f["click_timestamp"] //= 1000
            elif breakage == "future_timestamp":
                f["click_timestamp"] = int((now + 3600) * 1000)
            elif breakage == "unknown_device":
                f["device"] = "smart-fridge"
            elif breakage == "wrong_type":
                f["click_timestamp"] = str(f["click_timestamp"])
            else:
                raise ValueError(f"unknown breakage {breakage!r}; known: {self.breakages}")
            value = orjson.dumps(f)
        return GeneratedEvent(cid.encode(), value, cid, breakage, None)


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "2001:db8:" + ":".join(f"{rng.getrandbits(16):x}" for _ in range(6))
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def factory(**kwargs: object) -> AdClickFactory:
    """The generator's entry point (``clickflow generate --domain adclicks``)."""
    return AdClickFactory(**kwargs)  # type: ignore[arg-type]
