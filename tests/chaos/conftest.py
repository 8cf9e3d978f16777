"""The chaos suite prints one table of every pipeline it shook, at the end of the session
(and writes it to test-output/chaos-table.txt)."""

from __future__ import annotations

from pathlib import Path

from .harness import RESULTS, render_table


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not RESULTS:
        return
    text = render_table(RESULTS)
    terminalreporter.write_sep("=", "chaos results")
    terminalreporter.write(text)
    out = Path(config.rootpath) / "test-output"
    out.mkdir(exist_ok=True)
    (out / "chaos-table.txt").write_text(text)
