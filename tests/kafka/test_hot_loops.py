"""The hot-loop interpreter settings hold while any user is inside, and are then restored."""

from __future__ import annotations

import gc
import sys

from clickflow.hot_loops import FewerCollections, PromptHandoffs


def test_settings_hold_until_the_last_user_leaves_then_are_restored() -> None:
    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    handoffs, fewer = PromptHandoffs(), FewerCollections()
    with handoffs, fewer:
        assert sys.getswitchinterval() == min(interval, 0.001)
        assert gc.get_threshold()[0] == max(threshold[0], 50_000)
        with handoffs, fewer:  # a second consumer in the same process
            pass
        assert sys.getswitchinterval() == min(interval, 0.001)
        assert gc.get_threshold()[0] == max(threshold[0], 50_000)
    assert sys.getswitchinterval() == interval
    assert gc.get_threshold() == threshold
