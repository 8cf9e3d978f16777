"""Members of one group coming and going on the real broker: the group keeps assigning."""

from __future__ import annotations

import threading
import time

from clickflow.config import Settings
from clickflow.kafka.batch import BatchTrigger
from clickflow.kafka.consumer import BatchConsumer

from .test_batch_consumer import MemorySink, make_consumer, produce, records


def owned(consumers: list[BatchConsumer]) -> list[int]:
    return sorted(p for c in consumers for _t, p in list(c._epochs))


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_group_leader_stopping_during_a_rebalance_leaves_the_group_assigning(
    settings: Settings, topic: str
) -> None:
    """The first member (the group's leader) stops while a third member joins. Had it left
    the group (LeaveGroup) while tansu was forming the new generation, tansu would keep it as
    leader and assign nothing to anyone again; it stops without leaving, and the group drops
    it after session.timeout.ms."""
    sink = MemorySink()
    trigger = BatchTrigger(max_records=200, max_seconds=0.2)
    group = f"g-{topic}"
    first, second, third = (
        make_consumer(settings, topic, sink, trigger, group=group) for _ in range(3)
    )
    threads: list[threading.Thread] = []

    def start(c: BatchConsumer) -> None:
        t = threading.Thread(target=c.run, daemon=True)
        t.start()
        threads.append(t)

    try:
        start(first)
        wait_for(first.ready.is_set, 60, "the first member got no partitions")
        start(second)
        wait_for(lambda: bool(second._epochs), 60, "the second member got no partitions")
        start(third)
        # The group is forming a new generation once the first member lost its partitions.
        wait_for(lambda: not first._epochs, 60, "the third member did not start a rebalance")
        first.stop()
        threads[0].join(30)
        assert not threads[0].is_alive(), "the first member did not stop"
        wait_for(
            lambda: owned([second, third]) == [0, 1, 2, 3] and bool(third._epochs),
            90,  # session timeout + two joins, on a busy machine
            f"the group stopped assigning: the others own {owned([second, third])}",
        )
        produce(settings, topic, records(400))
        wait_for(lambda: len(set(sink.rows)) == 400, 60, "the records were not all read")
    finally:
        for c in (first, second, third):
            c.stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(set(sink.rows)) == list(range(400))
