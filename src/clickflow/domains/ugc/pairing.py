"""Pairing page_view_start / page_view_end into page views, exactly once, through Redis.

A page view is identified by ``(user_id, page_view_id)``. Its halves may arrive in any order,
in one batch or many, duplicated, after any outage, and the consumer may be killed at any
instant.

The clock. A half waits ``page_view_max_wait_seconds`` (12 h) of *Kafka time*: the
timestamps of the records that reached its partition after it (the collector keys records
by user_id, so both halves of a page view share a partition). A partition's clock is the
largest Kafka timestamp of the chunk being handled; it moves only when records are
consumed, so an outage of the consumer, Redis or ClickHouse, however long, stops it: an end
that reached Kafka within 12 h of its start pairs with it, whenever it is consumed. The
verdict depends only on the log and on the chunk boundaries, which the consumer framework
replays identically, so a replay reaches the same one. A partition with nothing left to
read has no record to move its clock; the background sweep moves it to the wall clock
(minus the producers' clock skew) only when the partition is read to its end.

State (Redis; every key starts with the configured prefix, then one namespace per purpose):

* ``pv:<len(user_id)>:<user_id><page_view_id>`` — one hash per page view. The user id is
  length-prefixed, so no two page views share a key and no id can reach another namespace.
  ``s`` / ``e``: the start / end still waiting for its partner (JSON, first one stored
  wins, HSETNX); ``d``: a tombstone once the page view was emitted, kept ``done_ttl`` of
  Kafka time so a late copy of either half is dropped: ``p`` closed, ``o`` the start was
  emitted unpaired (``s`` kept: an end within the wait still pairs, and its row replaces
  the unpaired one), ``x`` the end was dropped as an orphan (``e`` kept, for its start).
  No key has a wall-clock TTL: a half lives until it is emitted, whatever the outage.
* ``pending:<partition>`` — sorted set of the hashes with a waiting half, score: its
  deadline (Kafka time of the half + max wait);
* ``ended:<partition>`` — sorted set of the tombstones, score: when they may go;
* ``clock`` — per partition, the largest Kafka timestamp and offset handled (for the
  idle-partition sweep);
* ``sweep`` / ``sweep:lease`` — the background sweep's intent and lease;
* ``applied:<partition>`` — sorted set of the last 1,000 chunks' tokens applied (score: the
  chunk's Kafka clock), so a chunk's mutations are applied once.

Exactly once. A Kafka chunk (one partition's offset range, replayed identically after a
crash by the consumer framework's intent log) is handled as one unit, in this order:

1. ``plan``: read, in one script, the hashes of the chunk's page views, the partition's
   waiting halves whose deadline the chunk's clock passed, and its tombstones due to go;
   compute from that state and the chunk alone the page_view rows (paired, and unpaired
   starts whose wait is over) and the Redis mutations. Pure and deterministic.
2. insert the rows into ClickHouse with the chunk's deduplication token;
3. ``apply``: the mutations, in one atomic Lua script;
4. the framework commits the offsets.

A crash before 2 completes leaves Redis untouched, so the replay is a first run. A crash
after 2 makes the replay's insert a no-op (same token), whatever rows it computes; its
mutations then converge to the ones of the first run: if 3 happened, the chunk's halves are
found in Redis already (the stored half wins) or behind a tombstone (dropped; tombstones of
the chunk's own page views are never removed by that chunk); if 3 did not happen, the state
is the one of the first run and so is the plan.

A zombie consumer (it stalled after recording its intent, the group gave its partition to
another, then it woke up and finished its write) writes a chunk again *after* the new owner
wrote it and went on: its plan comes from a later state, and may emit a start that the
chunk's own clock made due (a chunk spanning more than the wait) in rows its insert drops
(the owner used the token). Its mutations must not mark that start emitted, so step 3 is
done once per chunk: ``apply`` records the chunk's token (``applied:<partition>``, the last
1,000 chunks) and does nothing for a token it holds. A zombie later than 1,000 chunks of its
partition is beyond this guard, as beyond the tables' deduplication window.

``ugc_page_view`` is a ReplacingMergeTree keyed by the page view (its start) with
``paired`` as the version: whatever a crash or a concurrent sweeper does, a page view read
with FINAL is one row, and a paired row wins over an unpaired one. So a crash between a
paired insert and its Redis update followed by a sweep, or a sweep redone long after the
tables' 1,000-block deduplication window, cannot double a page view.

Every half ends exactly once with a metric: paired, emitted unpaired (start), dropped as an
orphan end, dropped as a duplicate, or dropped as late (an end after its start was emitted
unpaired). A waiting hash found empty (deleted by hand) is counted and logged as missing.

Concurrency: one consumer owns a partition. Background sweeps are serialised inside a
process (a lock shared with the pairing) and across processes (a Redis lease that only its
owner deletes); the sweep takes, tombstones and records its intent in one atomic script.
The scripts touch many keys at once: a single Redis (or a primary with replicas), not
Redis Cluster.

Cost: one Redis round trip to read and one to write per chunk, whatever its size. A page
view paired within its chunk with nothing in Redis costs one HMGET, one HSET (its
tombstone) and a share of one ZADD.
"""

from __future__ import annotations

import logging
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
PAIRED = "p"  # tombstone: closed (paired, or decided for good)
UNPAIRED = "o"  # tombstone: the start was emitted unpaired (kept, its end may still pair)
ORPHAN_END = "x"  # tombstone: the end was dropped as an orphan (kept, for its start)
# Tokens of the last chunks applied, per partition (as the tables keep their last 1,000
# insert blocks): a chunk written again within them is not applied again.
APPLIED_KEEP = 1000


# All scripts take one JSON argument (cheap to send from Python; keys are exact JSON
# strings, so no id can be split or shifted) and run atomically, one round trip each.
# READ: KEYS = (pending, ended); ARGV[1] {keys, now, limit}. Returns three arrays: for the
# chunk's keys that hold anything (index, start, end, done) flattened; the waiting hashes
# whose deadline <= now (key, start, end, done) flattened; the tombstones due to go.
READ_SCRIPT = """
local p = cjson.decode(ARGV[1])
local out, due = {}, {}
for i, k in ipairs(p.keys) do
  local v = redis.call('HMGET', k, 's', 'e', 'd')
  if v[1] or v[2] or v[3] then
    out[#out + 1] = i
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or ''
  end
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', p.now, 'LIMIT', 0, p.limit)) do
  local v = redis.call('HMGET', k, 's', 'e', 'd')
  due[#due + 1] = k
  due[#due + 1] = v[1] or ''
  due[#due + 1] = v[2] or ''
  due[#due + 1] = v[3] or ''
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', p.now, 'LIMIT', 0, p.limit)
return {out, due, old}
"""
# APPLY: KEYS = (pending, ended, clock, applied); ARGV[1] {store: [[key, field, half,
# deadline]], done: [[key, code, field, half]], closed: [key], until, cleanup: [key],
# unpend: [key], partition, clock, offset, token, keep}. A chunk whose token is among the
# partition's last ``keep`` applied ones was applied already: nothing is done (returns -1).
# A tombstone keeps the half it names (field ""; none). ``closed`` are page views paired
# within the chunk that had no state at all: no hash to delete, no pending entry, so only
# their tombstone is written (most page views; half the calls).
# Sorted-set updates go in one ZADD / ZREM per 500 keys: a redis.call costs more than a member.
APPLY_SCRIPT = """
local pending, ended = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
if p.token ~= '' and redis.call('ZSCORE', KEYS[4], p.token) then
  return -1
end
local till = p['until']
for _, s in ipairs(p.store) do
  redis.call('HSETNX', s[1], s[2], s[3])
  redis.call('ZADD', pending, 'NX', s[4], s[1])
end
local zadd, zrem = {}, {}
local function flush(force)
  if #zadd >= 1000 or (force and #zadd > 0) then
    redis.call('ZADD', ended, unpack(zadd))
    zadd = {}
  end
  if #zrem >= 500 or (force and #zrem > 0) then
    redis.call('ZREM', pending, unpack(zrem))
    zrem = {}
  end
end
for _, d in ipairs(p.done) do
  redis.call('DEL', d[1])
  if d[3] ~= '' then
    redis.call('HSET', d[1], 'd', d[2], d[3], d[4])
  else
    redis.call('HSET', d[1], 'd', d[2])
  end
  zrem[#zrem + 1] = d[1]
  zadd[#zadd + 1] = till
  zadd[#zadd + 1] = d[1]
  flush(false)
end
for _, k in ipairs(p.closed) do
  redis.call('HSET', k, 'd', 'p')
  zadd[#zadd + 1] = till
  zadd[#zadd + 1] = k
  flush(false)
end
flush(true)
for _, k in ipairs(p.cleanup) do
  if redis.call('HEXISTS', k, 'd') == 1 then
    redis.call('DEL', k)
  end
  redis.call('ZREM', ended, k)
end
for _, k in ipairs(p.unpend) do
  redis.call('ZREM', pending, k)
end
local cur = tonumber(redis.call('HGET', KEYS[3], p.partition) or '-1')
if tonumber(p.clock) > cur then
  redis.call('HSET', KEYS[3], p.partition, p.clock)
end
local off = tonumber(redis.call('HGET', KEYS[3], p.partition .. ':offset') or '-1')
if tonumber(p.offset) > off then
  redis.call('HSET', KEYS[3], p.partition .. ':offset', p.offset)
end
if p.token ~= '' then
  redis.call('ZADD', KEYS[4], p.clock, p.token)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(p.keep) + 1))
end
return #p.store + #p.done
"""
# SWEEP: KEYS[1] the sweep intent; ARGV[1] {parts: [[pending, ended, now, until]], limit}.
# An intent left by an interrupted sweep is returned as it is (redo it first); otherwise
# the due hashes are taken, tombstoned and recorded as a new intent, atomically. The token
# is derived from the page views taken (JSON of their keys), so a redo inserts the same
# block whenever it runs.
SWEEP_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  return {1, cur}
end
local p = cjson.decode(ARGV[1])
local starts, keys = {}, {}
local orphan_ends, missing, taken = 0, 0, 0
for _, part in ipairs(p.parts) do
  local pending, ended, now, till = part[1], part[2], part[3], part[4]
  local left = p.limit - taken
  if left <= 0 then
    break
  end
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now, 'LIMIT', 0, left)) do
    taken = taken + 1
    redis.call('ZREM', pending, k)
    local v = redis.call('HMGET', k, 's', 'e', 'd')
    if not v[3] then
      redis.call('DEL', k)
      if v[1] then
        starts[#starts + 1] = v[1]
        keys[#keys + 1] = k
        redis.call('HSET', k, 'd', 'o', 's', v[1])
      elseif v[2] then
        orphan_ends = orphan_ends + 1
        redis.call('HSET', k, 'd', 'x', 'e', v[2])
      else
        missing = missing + 1
        redis.call('HSET', k, 'd', 'p')
      end
      redis.call('ZADD', ended, till, k)
    end
  end
end
if taken == 0 then
  return {0, ''}
end
local token = 'ugc-orphans:' .. redis.sha1hex(cjson.encode(keys))
local intent = cjson.encode({token = token, starts = starts, orphan_ends = orphan_ends,
                             missing = missing, taken = taken})
redis.call('SET', KEYS[1], intent)
return {0, intent}
"""
# Delete KEYS[1] only if it still holds ARGV[1] (a lease, or the intent of this token).
DELETE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(slots=True)
class Half:
    """One page_view_start (``kind == "s"``) or page_view_end (``"e"``)."""

    kind: str
    event_id: str
    user_id: str
    page_view_id: str
    ts: int  # epoch milliseconds (the record's server timestamp)
    page_type: str
    kafka_ts: int = 0  # epoch milliseconds: when it reached Kafka (the pairing clock)

    def dumps(self) -> bytes:
        return orjson.dumps(
            [self.event_id, self.user_id, self.page_view_id, self.ts, self.page_type, self.kafka_ts]
        )

    @classmethod
    def loads(cls, kind: str, raw: bytes | str) -> Half:
        event_id, user_id, page_view_id, ts, page_type, kafka_ts = orjson.loads(raw)
        return cls(kind, event_id, user_id, page_view_id, ts, page_type, kafka_ts)


PAGE_VIEW_COLUMNS = (
    "page_view_id",
    "user_id",
    "page_type",
    "started_at",
    "ended_at",
    "duration_seconds",
    "paired",
)


def page_view_row(start: Half, end: Half | None) -> tuple:
    """The ugc_page_view row, in ``PAGE_VIEW_COLUMNS`` order (DateTime64 as float seconds)."""
    if end is None:
        return (start.page_view_id, start.user_id, start.page_type, start.ts / 1000, None, None, 0)
    duration = max(0, end.ts - start.ts) / 1000
    return (
        start.page_view_id,
        start.user_id,
        start.page_type,
        start.ts / 1000,
        end.ts / 1000,
        duration,
        1,
    )


@dataclass
class PairingPlan:
    partition: int = 0
    clock: int = 0  # the chunk's Kafka clock (ms)
    offset: int = -1  # the chunk's last offset
    # The chunk's token: its update is applied once (a zombie's later plan is not).
    token: str = ""
    rows: list[tuple] = field(default_factory=list)
    store: list[tuple[str, Half]] = field(default_factory=list)  # (key, half) to HSETNX
    # Tombstones to write: (key, code, field, half): the half is kept under field (or "").
    done: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Paired within the chunk, with no state in Redis: only a "closed" tombstone to write.
    closed: list[str] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)  # tombstones whose time is over
    unpend: list[str] = field(default_factory=list)  # stale entries of the pending set
    pairs: int = 0  # page views emitted paired
    orphans: int = 0  # starts emitted unpaired
    orphan_ends: int = 0  # ends whose start never came: dropped
    missing: int = 0  # waiting hashes found empty
    duplicates: int = 0  # halves dropped as duplicates (or already applied)
    late: int = 0  # halves that met an "unpaired" tombstone


@dataclass
class SweepResult:
    orphans: int = 0  # starts emitted as paired = 0
    orphan_ends: int = 0  # ends whose start never came: dropped
    missing: int = 0  # waiting hashes found empty
    rows: list[tuple] = field(default_factory=list)


InsertFn = Callable[[list[tuple], str], None]  # (rows, deduplication token)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class PageViewPairing:
    def __init__(self, client: redis.Redis, config: UgcConfig) -> None:
        self.r = client
        self.config = config
        p = config.redis_prefix
        self.clock_key = f"{p}clock"
        self.sweep_key = f"{p}sweep"
        self.lease_key = f"{p}sweep:lease"
        self._lease_id = uuid.uuid4().hex
        self._read = client.register_script(READ_SCRIPT)
        self._apply = client.register_script(APPLY_SCRIPT)
        self._sweep = client.register_script(SWEEP_SCRIPT)
        self._delete_if = client.register_script(DELETE_IF_SCRIPT)

    def key(self, user_id: str, page_view_id: str) -> str:
        return f"{self.config.redis_prefix}pv:{len(user_id)}:{user_id}{page_view_id}"

    def pending_key(self, partition: int) -> str:
        return f"{self.config.redis_prefix}pending:{partition}"

    def ended_key(self, partition: int) -> str:
        return f"{self.config.redis_prefix}ended:{partition}"

    def applied_key(self, partition: int) -> str:
        return f"{self.config.redis_prefix}applied:{partition}"

    # -- pairing ------------------------------------------------------------------------------

    def plan(self, halves: list[Half], partition: int, clock: int, offset: int) -> PairingPlan:
        """Rows and mutations for one chunk (its halves in offset order, its Kafka clock and
        last offset); reads Redis only."""
        cfg = self.config
        wait = cfg.max_wait_ms
        plan = PairingPlan(partition=partition, clock=clock, offset=offset)
        first: dict[str, dict[str, Half]] = {}
        for h in halves:
            slot = first.setdefault(self.key(h.user_id, h.page_view_id), {})
            if h.kind in slot:
                plan.duplicates += 1
            else:
                slot[h.kind] = h
        keys = list(first)
        arg = {"keys": keys, "now": str(clock), "limit": cfg.sweep_limit}
        flat, due_flat, old = self._read(
            keys=[self.pending_key(partition), self.ended_key(partition)],
            args=[orjson.dumps(arg)],
        )
        states: dict[str, tuple[bytes, bytes, bytes]] = {
            keys[int(flat[j]) - 1]: (flat[j + 1], flat[j + 2], flat[j + 3])
            for j in range(0, len(flat), 4)
        }
        due: set[str] = set()
        for j in range(0, len(due_flat), 4):
            k = _s(due_flat[j])
            due.add(k)
            states[k] = (due_flat[j + 1], due_flat[j + 2], due_flat[j + 3])
        empty = (b"", b"", b"")
        for k in keys + [k for k in due if k not in first]:
            self._plan_one(plan, k, first.get(k, {}), states.get(k, empty), k in due, wait)
        plan.cleanup = [k for k in map(_s, old) if k not in first]
        return plan

    def _plan_one(
        self,
        plan: PairingPlan,
        k: str,
        mine: dict[str, Half],
        state: tuple[bytes, bytes, bytes],
        due: bool,
        wait: int,
    ) -> None:
        """One page view: the chunk's first halves (``mine``), its stored state, and whether
        the chunk's clock ended the wait of its stored half. The halves pair iff they
        reached Kafka at most ``wait`` apart, whatever the order in which they are handled."""
        raw_s, raw_e, done = state
        stored_s = Half.loads(START, raw_s) if raw_s else None
        stored_e = Half.loads(END, raw_e) if raw_e else None
        if due and done:
            plan.unpend.append(k)  # a stale entry of the pending set
        if done == UNPAIRED.encode() and stored_s is not None:
            # The start was emitted unpaired; its first end may still pair (producer clock
            # skew): the paired row replaces the unpaired one (ReplacingMergeTree).
            plan.duplicates += START in mine
            end = mine.get(END)
            if end is not None:
                if abs(end.kafka_ts - stored_s.kafka_ts) <= wait:
                    plan.rows.append(page_view_row(stored_s, end))
                    plan.pairs += 1
                else:
                    plan.late += 1
                plan.done.append((k, PAIRED, "", ""))
            return
        if done == ORPHAN_END.encode() and stored_e is not None:
            # The end was dropped as an orphan; its first start still makes the page view.
            plan.duplicates += END in mine
            start = mine.get(START)
            if start is not None:
                if abs(start.kafka_ts - stored_e.kafka_ts) <= wait:
                    plan.rows.append(page_view_row(start, stored_e))
                    plan.pairs += 1
                else:
                    plan.rows.append(page_view_row(start, None))
                    plan.orphans += 1
                plan.done.append((k, PAIRED, "", ""))
            return
        if done:  # closed
            plan.duplicates += len(mine)
            return
        stored: dict[str, Half] = {}
        if stored_s is not None:
            stored[START] = stored_s
        if stored_e is not None:
            stored[END] = stored_e
        for kind in list(mine):
            if kind in stored:
                plan.duplicates += 1  # a re-send, or this very half after a replay
                del mine[kind]
        start = stored.get(START) or mine.get(START)
        end = stored.get(END) or mine.get(END)
        if start is not None and end is not None:
            if abs(end.kafka_ts - start.kafka_ts) <= wait:
                plan.rows.append(page_view_row(start, end))
                plan.pairs += 1
            else:  # too far apart: the start alone, the end dropped
                plan.rows.append(page_view_row(start, None))
                plan.orphans += 1
                if end.kafka_ts < start.kafka_ts:
                    plan.orphan_ends += 1
                else:
                    plan.late += 1
            if stored or due:
                plan.done.append((k, PAIRED, "", ""))
            else:  # both halves in this chunk, nothing in Redis: no hash, no pending entry
                plan.closed.append(k)
        elif due and stored_s is not None:
            plan.rows.append(page_view_row(stored_s, None))
            plan.orphans += 1
            plan.done.append((k, UNPAIRED, START, raw_s.decode()))
        elif due and stored_e is not None:
            plan.orphan_ends += 1
            plan.done.append((k, ORPHAN_END, END, raw_e.decode()))
        elif due:
            plan.unpend.append(k)
            plan.missing += 1
        else:
            for h in mine.values():
                plan.store.append((k, h))

    def apply(self, plan: PairingPlan) -> bool:
        """The plan's Redis mutations in one atomic script; idempotent. With a token, done
        once per chunk: False when the chunk was applied already (by an earlier run)."""
        cfg = self.config
        wait = cfg.max_wait_ms
        payload = {
            "store": [
                (k, h.kind, h.dumps().decode(), str(h.kafka_ts + wait)) for k, h in plan.store
            ],
            "done": plan.done,
            "closed": plan.closed,
            "until": str(plan.clock + cfg.tombstone_ms),
            "cleanup": plan.cleanup,
            "unpend": plan.unpend,
            "partition": str(plan.partition),
            "clock": str(plan.clock),
            "offset": str(plan.offset),
            "token": plan.token,
            "keep": str(APPLIED_KEEP),
        }
        p = plan.partition
        keys = [self.pending_key(p), self.ended_key(p), self.clock_key, self.applied_key(p)]
        return int(self._apply(keys=keys, args=[orjson.dumps(payload)])) >= 0

    def clocks(self) -> dict[int, tuple[int, int]]:
        """Per partition: (largest Kafka timestamp, last offset) handled so far."""
        raw = {_s(k): int(v) for k, v in self.r.hgetall(self.clock_key).items()}
        return {int(k): (v, raw.get(f"{k}:offset", -1)) for k, v in raw.items() if ":" not in k}

    # -- sweep --------------------------------------------------------------------------------

    def sweep(self, insert: InsertFn, clocks: dict[int, int]) -> SweepResult:
        """Emit the halves whose deadline the given clocks passed (``{partition: now ms}``).

        The chunk path does this for every partition with traffic; this is for partitions
        read to their end, and for operators and tests. Holds a Redis lease so one process
        sweeps at a time; returns what it emitted."""
        total = SweepResult()
        lease_ms = int(max(30.0, self.config.sweep_interval_seconds * 2) * 1000)
        if not self.r.set(self.lease_key, self._lease_id, nx=True, px=lease_ms):
            if self.r.get(self.lease_key) != self._lease_id.encode():
                return total
        try:
            while True:
                res, taken, redone = self._sweep_once(insert, clocks)
                total.orphans += res.orphans
                total.orphan_ends += res.orphan_ends
                total.missing += res.missing
                total.rows += res.rows
                if not redone and taken < self.config.sweep_limit:
                    break
        finally:
            self._delete_if(keys=[self.lease_key], args=[self._lease_id])
        return total

    def _sweep_once(
        self, insert: InsertFn, clocks: dict[int, int]
    ) -> tuple[SweepResult, int, bool]:
        cfg = self.config
        parts = [
            (self.pending_key(p), self.ended_key(p), str(now), str(now + cfg.tombstone_ms))
            for p, now in sorted(clocks.items())
        ]
        arg = {"parts": parts, "limit": cfg.sweep_limit}
        redone, raw = self._sweep(keys=[self.sweep_key], args=[orjson.dumps(arg)])
        if not raw:
            return SweepResult(), 0, False
        intent = orjson.loads(raw)
        if redone:
            log.info("redoing an interrupted orphan sweep", extra={"token": intent["token"]})
        starts = intent["starts"] or []  # cjson encodes an empty array as {}
        rows = [page_view_row(Half.loads(START, s), None) for s in starts]
        if rows:
            insert(rows, intent["token"])
        self._delete_if(keys=[self.sweep_key], args=[raw])
        if intent["missing"]:
            log.warning("waiting page views found empty", extra={"missing": intent["missing"]})
        result = SweepResult(len(rows), intent["orphan_ends"], intent["missing"], rows)
        return result, intent["taken"], bool(redone)

    def pending_count(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        parts = list(self.clocks())
        for p in parts:
            pipe.zcard(self.pending_key(p))
        return int(sum(pipe.execute())) if parts else 0
