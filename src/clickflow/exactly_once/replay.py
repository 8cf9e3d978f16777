"""Replay planning: recorded offset ranges are cut again as exactly the same chunks.

After a crash (or when a partition moves to another consumer) the records of a partition
from its committed offset on are read again. Those that fall in a recorded intent must be
written as the same chunk, with the same first and last offset, so that the chunk's
deduplication token is the same and the store drops what was already written. A recorded
range that is not yet complete in the buffer is held back until it is.
"""

from __future__ import annotations

from collections import deque

from confluent_kafka import Message

from clickflow.kafka.batch import Chunk

TP = tuple[str, int]


class ReplayPlan:
    """The recorded ranges still to be replayed, per partition."""

    def __init__(self) -> None:
        self._ranges: dict[TP, deque[tuple[int, int]]] = {}

    def set(self, tp: TP, ranges: list[tuple[int, int]]) -> None:
        if ranges:
            self._ranges[tp] = deque(ranges)
        else:
            self._ranges.pop(tp, None)

    def forget(self, tp: TP) -> None:
        self._ranges.pop(tp, None)

    def __contains__(self, tp: TP) -> bool:
        return tp in self._ranges

    def cut(self, by_tp: dict[TP, list[Message]]) -> tuple[list[Chunk], list[Message]]:
        """Chunks of the records of each partition (in offset order), and the records held
        back because a recorded range they belong to is not complete yet."""
        chunks: list[Chunk] = []
        held: list[Message] = []
        for (topic, partition), lst in by_tp.items():
            plan = self._ranges.get((topic, partition))
            i = 0
            if plan:
                while plan and i < len(lst):
                    first, last = plan[0]
                    j = i
                    while j < len(lst) and lst[j].offset() <= last:
                        j += 1
                    if j == len(lst) and lst[-1].offset() < last:
                        break  # this recorded chunk is not complete yet: hold it back
                    chunks.append(Chunk(topic, partition, first, last, lst[i:j]))
                    plan.popleft()
                    i = j
                if plan:
                    held.extend(lst[i:])
                    continue
                self._ranges.pop((topic, partition), None)
            if i < len(lst):
                rest = lst[i:]
                chunks.append(Chunk(topic, partition, rest[0].offset(), rest[-1].offset(), rest))
        return chunks, held
