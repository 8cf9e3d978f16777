"""Exact deduplication by click_id: claims in Redis, for the whole dedup window.

Every click_id is claimed atomically in Redis by the first record that carries it, and the
claim's owner is that record's own Kafka coordinates (partition, offset, Kafka timestamp):

* another record with the same click_id (a re-send, at any distance, on any partition, read
  by any consumer of the group) finds a claim owned by someone else: a *duplicate*;
* the very same record read again (crash, retried batch, rebalance, another group) finds
  its own claim: a *replay*, which the pipeline resolves against the raw store;
* claims survive restarts (Redis is durable with AOF) and are shared by every consumer.

Buckets. Claims are fields of one Redis hash per *bucket* of Kafka time, ``window_s`` wide
(``<prefix><bucket number>``). A record claims in its own bucket and looks in its bucket and
both neighbours, so two copies less than ``window_s`` apart in Kafka time always meet; copies
further apart may meet (up to ``2 * window_s``). The Kafka timestamp is part of the record,
so a replay looks in the same buckets as the first pass whatever the processing clock says.
A bucket expires ``2 * window_s + grace_s`` after its last claim: it is needed for one more
window after its own, and ``grace_s`` covers a consumer outage between a click and its copy.

Nothing a client sends reaches Redis as text: the field is a 16-byte BLAKE2b digest of the
click_id and the owner 16 packed bytes, so every claim is a fixed 32-byte record (no
separator an id could contain). About 100 bytes of Redis memory per claim.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from clickflow.config import Settings
from clickflow.stores.redis import redis_client

_pack_owner = struct.Struct(">HQHI").pack  # the 48 timestamp bits as 16 + 32

CLAIM_BYTES = 32  # 16-byte digest of the click_id + 16-byte owner

# KEYS[3k-2], KEYS[3k-1], KEYS[3k]: the previous, own and next bucket of group k; ARGV[1]:
# the ttl; ARGV[k + 1]: the claims of group k, CLAIM_BYTES each. Per 1000 claims one HMGET
# per existing bucket and one HSET. Returns {duplicates, replays}: 1-based positions in the
# concatenated claims. ``taken`` holds claims made earlier in this call (copies in one batch).
_CLAIM_LUA = """
local ttl = tonumber(ARGV[1])
local sub = string.sub
local dups, own = {}, {}
local base = 0
local taken = {}
for g = 1, #KEYS / 3 do
  local prev, key, nxt = KEYS[3 * g - 2], KEYS[3 * g - 1], KEYS[3 * g]
  local look = {key}
  if redis.call('EXISTS', prev) == 1 then look[#look + 1] = prev end
  if redis.call('EXISTS', nxt) == 1 then look[#look + 1] = nxt end
  local blob = ARGV[g + 1]
  local n = #blob / 32
  local i = 0
  while i < n do
    local m = math.min(1000, n - i)
    local fields, owners = {}, {}
    for j = 1, m do
      local at = (i + j - 1) * 32
      fields[j] = sub(blob, at + 1, at + 16)
      owners[j] = sub(blob, at + 17, at + 32)
    end
    local found = {}
    for _, k in ipairs(look) do found[#found + 1] = redis.call('HMGET', k, unpack(fields)) end
    local new = {}
    for j = 1, m do
      local field = fields[j]
      local holder = taken[field]
      for f = 1, #found do holder = holder or found[f][j] end
      if holder then
        if holder == owners[j] then own[#own + 1] = base + i + j
        else dups[#dups + 1] = base + i + j end
      else
        taken[field] = owners[j]
        new[#new + 1] = field
        new[#new + 1] = owners[j]
      end
    end
    if #new > 0 then redis.call('HSET', key, unpack(new)) end
    i = i + m
  end
  redis.call('EXPIRE', key, ttl)
  base = base + n
end
return {dups, own}
"""


def claim_id(click_id: str) -> bytes:
    return hashlib.blake2b(click_id.encode(), digest_size=16).digest()


def claim_owner(partition: int, offset: int, kafka_ms: int) -> bytes:
    """16 bytes: partition, offset and the low 48 bits of the Kafka timestamp (a broker that
    lost its log reuses offsets; its new records have other timestamps)."""
    return _pack_owner(partition, offset, (kafka_ms >> 32) & 0xFFFF, kafka_ms & 0xFFFF_FFFF)


@dataclass(slots=True)
class Verdicts:
    duplicates: set[int]  # indexes of claims another record holds
    replays: set[int]  # indexes of claims this very record made before


class ClickClaims:
    """Claim click_ids in Redis; connected on first use, so a missing Redis is a sink
    failure the consumer framework retries."""

    def __init__(self, settings: Settings, prefix: str, window_s: float, grace_s: float) -> None:
        self.settings = settings
        self.prefix = prefix
        self.window_ms = max(1, int(window_s * 1000))
        self.ttl_s = max(1, int(2 * window_s + grace_s))
        self._script = None

    def bucket(self, kafka_ms: int) -> int:
        return kafka_ms // self.window_ms

    def claim(self, buckets: list[int], claims: list[bytes]) -> Verdicts:
        """``claims[i]`` (``claim_id + claim_owner``) falls in bucket ``buckets[i]``."""
        if not claims:
            return Verdicts(set(), set())
        if self._script is None:
            self._script = redis_client(self.settings).register_script(_CLAIM_LUA)
        if min(buckets) == max(buckets):  # the usual case: a batch within one bucket
            b, prefix = buckets[0], self.prefix
            keys = [f"{prefix}{b - 1}", f"{prefix}{b}", f"{prefix}{b + 1}"]
            dups, own = self._script(keys=keys, args=[self.ttl_s, b"".join(claims)])
            return Verdicts({int(i) - 1 for i in dups}, {int(i) - 1 for i in own})
        by_bucket: dict[int, list[int]] = {}
        for i, b in enumerate(buckets):
            by_bucket.setdefault(b, []).append(i)
        keys: list[str] = []
        blobs: list[bytes] = []
        flat: list[int] = []
        for b, indexes in sorted(by_bucket.items()):
            keys += [f"{self.prefix}{b - 1}", f"{self.prefix}{b}", f"{self.prefix}{b + 1}"]
            blobs.append(b"".join(claims[i] for i in indexes))
            flat += indexes
        dups, own = self._script(keys=keys, args=[self.ttl_s, *blobs])
        return Verdicts({flat[int(i) - 1] for i in dups}, {flat[int(i) - 1] for i in own})
