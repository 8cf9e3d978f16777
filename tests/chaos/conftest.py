"""The chaos suite's set-up (``chaos_setup``: a pipeline's topic, DLQ, environment and
servers) and its one table of every pipeline it shook, printed at the end of the session
(and written to test-output/chaos-table.txt)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics

from .harness import RESULTS, ChaosSetup, MakeSetup, Profile, Report, base_env, render_table


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not RESULTS:
        return
    text = render_table(RESULTS)
    terminalreporter.write_sep("=", "chaos results")
    terminalreporter.write(text)
    out = Path(config.rootpath) / "test-output"
    out.mkdir(exist_ok=True)
    (out / "chaos-table.txt").write_text(text)


@pytest.fixture
def chaos_setup(base_settings: Settings, tmp_path: Path) -> Iterator[MakeSetup]:
    """``chaos_setup(domain, profile, partitions)``: a ChaosSetup for that domain's pipeline."""
    made: list[ChaosSetup] = []

    def make(domain: str, profile: Profile, partitions: int = 4) -> ChaosSetup:
        topic = f"chaos-{domain}-{uuid.uuid4().hex[:8]}"
        ensure_topics(
            base_settings.kafka_bootstrap,
            [TopicSpec(topic, partitions), TopicSpec(dlq_topic(topic), partitions)],
        )
        env = {
            **base_env(base_settings, tmp_path / "data"),
            f"CLICKFLOW_{domain.upper()}_TOPIC": topic,
        }
        setup = ChaosSetup(
            base_settings, Report(domain, profile.name), topic, partitions, env, tmp_path
        )
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.close()
