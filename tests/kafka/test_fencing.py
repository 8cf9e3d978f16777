"""Fenced writes: the exact interleaving of a batch retried across a rebalance.

Consumer A records its intent for partition p, range 100-199, and fails; while A backs off
(inside its retry loop, where librdkafka runs rebalance callbacks), p is revoked from A and
assigned to B; B writes 100-349 and commits 350; then A retries. A must not write. Driven
through the framework's real code (``_flush``, ``_deliver``, ``_on_assign``, ``_on_revoke``)
with a scripted Kafka client: the broker's part here is only the order of the callbacks.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import TopicPartition

from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.dlq import DeadLetter

from .test_batch_consumer import MemoryIntentLog

TOPIC = "page_views"
P = TopicPartition(TOPIC, 0)


class Record:
    """The parts of a confluent_kafka.Message the framework reads."""

    def __init__(self, offset: int) -> None:
        self._offset = offset
        self._value = b'{"n": %d}' % offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def error(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._value)


def records(first: int, last: int) -> list[Record]:
    return [Record(o) for o in range(first, last + 1)]


class Group:
    """The committed offsets of the group, shared by both scripted clients."""

    def __init__(self) -> None:
        self.committed: dict[tuple[str, int], int] = {(TOPIC, 0): 100}


class ScriptedClient:
    """A Kafka client whose ``consume`` runs the next scripted rebalance step (as
    librdkafka runs rebalance callbacks inside consume/poll)."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.steps: list = []
        self.assigned: list[TopicPartition] = []
        self.commits: list[tuple[int, int]] = []

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list:
        if self.steps:
            self.steps.pop(0)()
        return []

    def committed(self, partitions, timeout: float = 0):
        return [
            TopicPartition(p.topic, p.partition, self.group.committed.get((p.topic, p.partition)))
            for p in partitions
        ]

    def commit(self, offsets, asynchronous: bool = False) -> None:
        for tp in offsets:
            self.group.committed[(tp.topic, tp.partition)] = tp.offset
            self.commits.append((tp.partition, tp.offset))

    def assignment(self):
        return list(self.assigned)

    def pause(self, partitions) -> None:
        pass

    def resume(self, partitions) -> None:
        pass

    def get_watermark_offsets(self, tp, cached: bool = True):
        return (0, 1000)


class Store:
    """One ClickHouse table: rows by chunk token (a replayed token is dropped)."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.rows: list[int] = []


class Sink:
    """A handler writing to the shared store; fails its first ``fail`` calls."""

    def __init__(self, store: Store, fail: int = 0) -> None:
        self.store = store
        self.fail = fail
        self.calls = 0
        self.written_by_me: list[int] = []

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("insert failed")
        for c in batch.chunks:
            tok = c.token(batch.group)
            if tok not in self.store.tokens:
                self.store.tokens.add(tok)
                rows = [m.offset() for m in c.messages]
                self.store.rows += rows
                self.written_by_me += rows
        return []


class PipelinedSink(Sink):
    """The same with ``submit``: the first attempt's failure comes back as a future."""

    def submit(self, batch: Batch, before_write) -> Future[list[DeadLetter]]:
        done: Future[list[DeadLetter]] = Future()
        try:
            before_write(batch)
            done.set_result(self.handle(batch))
        except Exception as e:
            done.set_exception(e)
        return done


def consumer(client: ScriptedClient, sink: Sink, intents: MemoryIntentLog) -> BatchConsumer:
    c = BatchConsumer(
        name="fencing-test",
        topics=[TOPIC],
        handler=sink,
        consumer_conf={"group.id": "clickflow-pageviews"},
        dlq_producer=None,  # type: ignore[arg-type]  # no dead letters here
        trigger=BatchTrigger(max_records=1000, max_seconds=None),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=intents,
        backoff_initial=0.001,
        backoff_max=0.002,
    )
    c._consumer = client  # type: ignore[assignment]
    return c


@pytest.mark.parametrize("sink_class", [Sink, PipelinedSink], ids=["retry-loop", "pipelined"])
@pytest.mark.parametrize("failing", ["insert", "intent"])
@pytest.mark.parametrize("moves_to", ["B", "back-to-A"])
def test_a_batch_retried_across_a_rebalance_never_writes_a_lost_partition(
    sink_class: type[Sink], failing: str, moves_to: str
) -> None:
    group, store, intents = Group(), Store(), MemoryIntentLog()
    client_a, client_b = ScriptedClient(group), ScriptedClient(group)
    sink_a = sink_class(store, fail=1 if failing == "insert" else 0)
    sink_b = Sink(store)
    if failing == "intent":
        intents.fail_records = 1  # A's intent is never recorded before p moves
    a = consumer(client_a, sink_a, intents)
    b = consumer(client_b, sink_b, intents)
    a._on_assign(client_a, [P])
    a._buffer = records(100, 199)

    def move() -> None:
        """p is revoked from A while it backs off; its next owner re-reads it from the
        committed offset (B writes 100-349 and commits at once)."""
        a._on_revoke(client_a, [P])
        if moves_to == "B":
            b._on_assign(client_b, [P])
            b._buffer = records(100, 349)
            b._flush(client_b)
        else:
            a._on_assign(client_a, [P])
            a._buffer = records(100, 349)

    client_a.steps = [move]
    a._flush(client_a)  # fails, backs off (the move happens), retries
    a._finish_in_flight(client_a)
    if moves_to == "back-to-A":
        a._flush(client_a)  # the records read again, in A's new epoch
        a._finish_in_flight(client_a)

    assert group.committed[(TOPIC, 0)] == 350
    assert sorted(store.rows) == list(range(100, 350)), "an offset written twice or lost"
    if moves_to == "B":
        # A's retry did not even try to write p (only its failed first attempt reached it)
        assert sink_a.calls == (1 if failing == "insert" else 0)
        assert sink_a.written_by_me == []
        assert (0, 200) not in client_a.commits
    # The recorded ranges resolve to one chain whoever reads them.
    chain = intents.pending("clickflow-pageviews", TOPIC, 0, 100)
    assert chain in ([(100, 349)], [(100, 199), (200, 349)]), chain
