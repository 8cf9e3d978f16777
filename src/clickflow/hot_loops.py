"""Interpreter settings for the per-record hot loops (generator, consumers), process-wide.

Both are counted: several engines and consumers may run in threads of one process, and the
settings stay until the last of them is done."""

from __future__ import annotations

import gc
import sys
import threading


class _WhileInUse:
    """Applies a process-wide setting while at least one user is inside the context."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._apply()
            self._users += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._restore()

    def _apply(self) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError


class FewerCollections(_WhileInUse):
    """While hot loops run: freeze what exists and collect the young generation every
    50,000 allocations instead of 700.

    Records in flight (generator events with their callbacks; a consumer's buffered Kafka
    messages, decoded rows and claims) outlive the young generation, so CPython's cyclic
    collector rescans them over and over: 0.7 us of the 7.8 us a generated event cost at
    126k events/s, ~8% of the page-view pipeline at 100k events/s. Neither loop makes
    reference cycles per record, so collecting less often leaves no garbage behind."""

    def _apply(self) -> None:
        self._saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(self._saved[0], 50_000), *self._saved[1:])

    def _restore(self) -> None:
        gc.set_threshold(*self._saved)
        gc.unfreeze()


class PromptHandoffs(_WhileInUse):
    """While consumers run: a thread waiting for the GIL gets it within 1 ms, not 5 ms.

    A pipelined handler's writer threads (Redis claims, ClickHouse inserts) need the GIL for
    a moment before and after every call, while the consumer's thread decodes the next batch
    holding it. With CPython's default 5 ms switch interval each of those moments could wait
    up to 5 ms, so every claim call came back later than Redis answered it. Page views,
    exactly-once, six interleaved pairs (measured while small parts were packed, see
    docs/design.md): 105k against 100k events/s, faster in every pair."""

    def _apply(self) -> None:
        self._saved = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved, 0.001))

    def _restore(self) -> None:
        sys.setswitchinterval(self._saved)


FEWER_COLLECTIONS = FewerCollections()
PROMPT_HANDOFFS = PromptHandoffs()
