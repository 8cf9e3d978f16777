"""The controls the engine and the worker pool share: one class, changes forwarded as commands."""

from __future__ import annotations

import pytest

from clickflow.generator.controls import Command, GeneratorControls
from clickflow.generator.engine import Engine
from clickflow.generator.modes import RateModel
from clickflow.generator.options import Mix
from clickflow.generator.workers import WorkerPool


class Recording(GeneratorControls):
    def __init__(self) -> None:
        super().__init__("test", RateModel(mode="regular"), None, None, [("night", 5.0)])
        self.forwarded: list[Command] = []

    def _forward(self, command: Command) -> None:
        self.forwarded.append(command)


def test_engine_and_pool_share_one_controls_class() -> None:
    assert issubclass(Engine, GeneratorControls) and issubclass(WorkerPool, GeneratorControls)
    for name in ("set_mode", "set_rate", "set_schedule", "set_mix", "state", "stop", "apply"):
        assert getattr(Engine, name) is getattr(GeneratorControls, name)
        assert getattr(WorkerPool, name) is getattr(GeneratorControls, name)


def test_a_change_is_applied_then_forwarded() -> None:
    c = Recording()
    c.set_rate(500)
    state = c.state()
    assert (state["mode"], state["rate"], state["schedule"]) == ("fixed", 500.0, None)
    c.set_mix(Mix(0.1, 0.2))
    assert c.state()["mix"] == {"broken_share": 0.1, "duplicate_share": 0.2}
    assert c.forwarded == [("rate", 500.0), ("mix", Mix(0.1, 0.2))]


def test_a_rejected_change_changes_and_forwards_nothing() -> None:
    c = Recording()
    with pytest.raises(ValueError):
        c.set_rate(0)
    with pytest.raises(ValueError):
        c.set_mode("warp")
    assert c.forwarded == [] and c.state()["mode"] == "regular"


def test_apply_carries_out_a_forwarded_command() -> None:
    source, worker = Recording(), Recording()
    source.set_mode("burst")
    source.set_schedule([("night", 1.0), ("burst", 2.0)])
    for command in source.forwarded:
        worker.apply(command)
    assert worker.state()["mode"] == "burst"
    assert worker.state()["schedule"] == [("night", 1.0), ("burst", 2.0)]
    worker.apply(("stop", None))
    assert worker._stop.is_set()
    with pytest.raises(ValueError, match="unknown generator command"):
        worker.apply(("explode", None))
