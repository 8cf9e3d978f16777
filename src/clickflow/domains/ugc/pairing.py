"""Pairing page_view_start / page_view_end into page views, exactly once, through Redis.

A page view is identified by ``(user_id, page_view_id)``. Its halves may arrive in any order,
in one batch or many, duplicated, and the consumer may be killed at any instant.

State (Redis), per page view, one hash ``pv:{page_view_id}.{user_id}``:

* ``s`` / ``e`` — the start / end half still waiting for its partner (JSON), written with
  HSETNX so the first one stored wins and re-writing it is a no-op;
* ``d`` — a tombstone once the page view was emitted (``p`` paired, ``o`` orphan). The halves
  are dropped then; the tombstone lives ``done_ttl`` (default: the max wait, 12 h) so a late
  duplicate of either half is recognised and dropped instead of opening a second page view.

plus ``pv:pending``, a sorted set of the hashes holding an unpaired half (score: when it was
first stored), which the orphan sweep scans, and ``pv:sweep``, the sweep's intent.
Every hash has a TTL (max wait + grace) as a safety net.

This replaces the seed's two Redis databases (12 h copy + no-TTL copy, "keys of the second
db missing from the first are orphans"): one hash with a TTL and an explicit sorted set by
time give the same "an end may come before its start" and "a start without an end is
emitted after 12 h", without scanning all keys and without a window where an end expires
between two scheduled runs.

Exactly once. A Kafka chunk (one partition's offset range, replayed identically after a
crash by the consumer framework's intent log) is handled as one unit, in this order:

1. ``plan``: read the hashes of the chunk's page views; compute, from that state and the
   chunk alone, the page_view rows and the Redis mutations. Pure and deterministic.
2. insert the rows into ClickHouse with the chunk's deduplication token;
3. ``apply``: the mutations, in one atomic Lua script: store unpaired halves,
   replace paired hashes by tombstones, update ``pv:pending``;
4. the framework commits the offsets.

A crash before 2 completes leaves Redis untouched, so the replay is a first run. A crash
after 2 makes the replay's insert a no-op (same token), whatever rows it computes; its
mutations then converge to the ones of the first run: if 3 happened, the chunk's halves are
found in Redis already (the stored half wins; storing it again is a no-op) or behind a
tombstone (dropped); if 3 did not happen, the state is the one of the first run and so is
the plan. (The replay comes right after the restart, well inside the tables' deduplication
window of 1000 blocks.)
Chunks are handled one after another, so a later chunk only sees Redis state that an earlier
chunk fully applied. Duplicates: only the first start and the first end of a page view (by
offset, or the one already in Redis) count; the rest are dropped and counted.

Orphans. ``sweep`` takes the hashes of ``pv:pending`` older than the max wait; starts with
no end become ``paired = 0`` rows with a null duration, ends with no start are dropped and
counted. The sweep writes its intent (token + rows) *and* the tombstones in one MULTI, then
inserts the rows with that token, then deletes the intent; a sweep interrupted anywhere
redoes the recorded intent first, so an orphan is emitted exactly once, and an end that
arrives after its start was expired meets the tombstone (dropped, counted as late).

Concurrency: one consumer owns a partition and the collector keys records by user_id, so a
page view's halves are handled by one consumer at a time. Sweeps are serialised with the
pairing inside a process (a lock) and across processes (a Redis lease); only an end that
arrives at the very instant its 12 h-old start is swept by *another* process could yield
both an orphan and a paired row. The scripts touch many keys at once: a single Redis (or
a primary with replicas), not Redis Cluster.

Cost: one Redis round trip to read and one to write per chunk, whatever its size.
Proved by tests/domains/ugc: crashes injected after the insert and after the Redis write
(the framework replays the same chunks), an interrupted sweep, and ``clickflow process ugc``
killed with SIGKILL mid-pairing, each compared with page views computed independently.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import redis

from clickflow.domains.ugc.config import UgcConfig

log = logging.getLogger("clickflow.ugc.pairing")

START = "s"
END = "e"
DONE = "d"


# Both scripts run atomically in Redis, one round trip per chunk whatever its size; their
# input is one JSON argument (cheap to send from Python; keys are exact JSON strings).
# READ: for the keys that hold anything, (index, start, end, done) flattened.
READ_SCRIPT = """
local out = {}
for i, k in ipairs(cjson.decode(ARGV[1])) do
  local v = redis.call('HMGET', k, 's', 'e', 'd')
  if v[1] or v[2] or v[3] then
    out[#out + 1] = i
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or ''
  end
end
return out
"""
# APPLY: KEYS[1] the pending set; ARGV[1] {now, half_ttl, done_ttl, store: [[key, field,
# half], ...], done: [key, ...]}.
APPLY_SCRIPT = """
local pending = KEYS[1]
local p = cjson.decode(ARGV[1])
for _, s in ipairs(p.store) do
  redis.call('HSETNX', s[1], s[2], s[3])
  redis.call('EXPIRE', s[1], p.half_ttl)
  redis.call('ZADD', pending, 'NX', p.now, s[1])
end
for _, k in ipairs(p.done) do
  redis.call('DEL', k)
  redis.call('HSET', k, 'd', 'p')
  redis.call('EXPIRE', k, p.done_ttl)
  redis.call('ZREM', pending, k)
end
return #p.store + #p.done
"""


@dataclass(slots=True)
class Half:
    """One page_view_start (``kind == "s"``) or page_view_end (``"e"``)."""

    kind: str
    event_id: str
    user_id: str
    page_view_id: str
    ts: int  # epoch milliseconds
    page_type: str

    def dumps(self) -> bytes:
        return orjson.dumps(
            [self.event_id, self.user_id, self.page_view_id, self.ts, self.page_type]
        )

    @classmethod
    def loads(cls, kind: str, raw: bytes) -> Half:
        event_id, user_id, page_view_id, ts, page_type = orjson.loads(raw)
        return cls(kind, event_id, user_id, page_view_id, ts, page_type)


def page_view_row(start: Half, end: Half | None) -> dict:
    """The ugc_page_view row (JSONEachRow; DateTime64 as float seconds)."""
    if end is None:
        ended, duration, paired = None, None, 0
    else:
        ended, duration, paired = end.ts / 1000, max(0, end.ts - start.ts) / 1000, 1
    return {
        "page_view_id": start.page_view_id,
        "user_id": start.user_id,
        "page_type": start.page_type,
        "started_at": start.ts / 1000,
        "ended_at": ended,
        "duration_seconds": duration,
        "paired": paired,
    }


@dataclass
class PairingPlan:
    rows: list[dict] = field(default_factory=list)
    store: list[tuple[str, Half]] = field(default_factory=list)  # (key, half) to HSETNX
    done: list[str] = field(default_factory=list)  # keys to replace by a "paired" tombstone
    duplicates: int = 0  # halves dropped as duplicates (or already applied)
    late: int = 0  # halves that met an "orphan" tombstone


@dataclass
class SweepResult:
    orphans: int = 0  # starts emitted as paired = 0
    orphan_ends: int = 0  # ends whose start never came: dropped
    rows: list[dict] = field(default_factory=list)


InsertFn = Callable[[list[dict], str], None]  # (rows, deduplication token)


class PageViewPairing:
    def __init__(self, client: redis.Redis, config: UgcConfig) -> None:
        self.r = client
        self.config = config
        p = config.redis_prefix
        self.pending_key = f"{p}pending"
        self.sweep_key = f"{p}sweep"
        self.lease_key = f"{p}sweep:lease"
        self._lease_id = uuid.uuid4().hex
        self._read = client.register_script(READ_SCRIPT)
        self._apply = client.register_script(APPLY_SCRIPT)

    def key(self, user_id: str, page_view_id: str) -> str:
        return f"{self.config.redis_prefix}{page_view_id}.{user_id}"

    # -- pairing ------------------------------------------------------------------------------

    def plan(self, halves: list[Half]) -> PairingPlan:
        """Rows and mutations for one chunk's halves (in offset order); reads Redis only."""
        plan = PairingPlan()
        if not halves:
            return plan
        first: dict[str, dict[str, Half]] = {}
        for h in halves:
            slot = first.setdefault(self.key(h.user_id, h.page_view_id), {})
            if h.kind in slot:
                plan.duplicates += 1
            else:
                slot[h.kind] = h
        keys = list(first)
        flat: list = self._read(args=[orjson.dumps(keys)])
        states: dict[str, tuple[bytes, bytes, bytes]] = {
            keys[int(flat[j]) - 1]: (flat[j + 1], flat[j + 2], flat[j + 3])
            for j in range(0, len(flat), 4)
        }
        empty = (b"", b"", b"")
        for k in keys:
            mine = first[k]
            stored_s, stored_e, done = states.get(k, empty)
            if done:
                n = len(mine)
                if done == b"o" and END in mine:
                    plan.late += 1
                    n -= 1
                plan.duplicates += n
                continue
            stored: dict[str, Half] = {}
            if stored_s:
                stored[START] = Half.loads(START, stored_s)
            if stored_e:
                stored[END] = Half.loads(END, stored_e)
            for kind in list(mine):
                if kind in stored:
                    plan.duplicates += 1  # a re-send, or this very half after a replay
                    del mine[kind]
            start = stored.get(START) or mine.get(START)
            end = stored.get(END) or mine.get(END)
            if start is not None and end is not None:
                plan.rows.append(page_view_row(start, end))
                plan.done.append(k)
            else:
                for h in mine.values():
                    plan.store.append((k, h))
        return plan

    def apply(self, plan: PairingPlan) -> None:
        """The plan's Redis mutations in one atomic script; idempotent."""
        if not plan.store and not plan.done:
            return
        cfg = self.config
        payload = {
            "now": int(time.time() * 1000),
            "half_ttl": cfg.half_ttl_seconds,
            "done_ttl": cfg.tombstone_ttl_seconds,
            "store": [(k, h.kind, h.dumps().decode()) for k, h in plan.store],
            "done": plan.done,
        }
        self._apply(keys=[self.pending_key], args=[orjson.dumps(payload)])

    # -- orphans ------------------------------------------------------------------------------

    def sweep(self, insert: InsertFn, now_ms: int | None = None) -> SweepResult:
        """Emit the starts that waited longer than the max wait as ``paired = 0`` rows.

        Holds a Redis lease so one process sweeps at a time; returns what it emitted."""
        total = SweepResult()
        lease_ms = int(max(30.0, self.config.sweep_interval_seconds * 2) * 1000)
        if not self.r.set(self.lease_key, self._lease_id, nx=True, px=lease_ms):
            if self.r.get(self.lease_key) != self._lease_id.encode():
                return total
        try:
            while True:
                res, taken, redone = self._sweep_once(insert, now_ms)
                total.orphans += res.orphans
                total.orphan_ends += res.orphan_ends
                total.rows += res.rows
                if not redone and taken < self.config.sweep_limit:
                    break
        finally:
            self.r.delete(self.lease_key)
        return total

    def _sweep_once(self, insert: InsertFn, now_ms: int | None) -> tuple[SweepResult, int, bool]:
        raw = self.r.get(self.sweep_key)
        redone = raw is not None
        if raw is None:
            intent = self._record_sweep_intent(now_ms)
            if intent is None:
                return SweepResult(), 0, False
        else:
            intent = orjson.loads(raw)
            log.info("redoing an interrupted orphan sweep", extra={"token": intent["token"]})
        if intent["rows"]:
            insert(intent["rows"], intent["token"])
        self.r.delete(self.sweep_key)
        result = SweepResult(len(intent["rows"]), intent["orphan_ends"], intent["rows"])
        return result, intent["keys"], redone

    def _record_sweep_intent(self, now_ms: int | None) -> dict | None:
        cfg = self.config
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - int(cfg.page_view_max_wait_seconds * 1000)
        keys = self.r.zrangebyscore(self.pending_key, "-inf", cutoff, start=0, num=cfg.sweep_limit)
        if not keys:
            return None
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        states: list[dict[bytes, bytes]] = pipe.execute()
        rows: list[dict] = []
        orphan_ends = 0
        tx = self.r.pipeline(transaction=True)
        for k, state in zip(keys, states, strict=True):
            if state and b"d" not in state:
                if b"s" in state and b"e" not in state:
                    rows.append(page_view_row(Half.loads(START, state[b"s"]), None))
                elif b"e" in state and b"s" not in state:
                    orphan_ends += 1
                tx.delete(k)
                tx.hset(k, DONE, "o")
                tx.expire(k, cfg.tombstone_ttl_seconds)
        tx.zrem(self.pending_key, *keys)
        intent = {
            "token": f"ugc-orphans:{uuid.uuid4().hex}",
            "rows": rows,
            "orphan_ends": orphan_ends,
            "keys": len(keys),
        }
        tx.set(self.sweep_key, orjson.dumps(intent))
        tx.execute()
        return intent

    def pending_count(self) -> int:
        return int(self.r.zcard(self.pending_key))
