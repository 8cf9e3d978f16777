"""Schemathesis against the OpenAPI specs of the collector and the query API (in-process,
real stores): inputs that fit the spec and inputs that break it, for every operation, and
never a 5xx.

Operations are driven one by one through ``as_strategy`` with Hypothesis (schemathesis's own
pytest plugin does not run on pytest 9 yet); the budget per operation keeps the whole file
within about a minute on two cores.
"""

from __future__ import annotations

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from starlette.testclient import TestClient

EXAMPLES_PER_OPERATION = 30


def fuzz_app(app: FastAPI, skip: tuple[str, ...] = ()) -> list[str]:
    """Fuzz every operation of ``app``'s spec; returns what was covered (for the assert)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    covered: list[str] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.startswith(skip):
            continue
        strategy = st.one_of(
            op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first 5xx
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case) -> None:
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} query={case.query} "
                f"headers={case.headers} body={case.body!r:.300} -> "
                f"{response.status_code}: {response.text[:500]}"
            )

        try:
            run()
        except Exception as e:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{op.method.upper()} {op.path}: {type(e).__name__}: {str(e)[:600]}")
        covered.append(f"{op.method.upper()} {op.path}")
    assert not failures, "\n\n".join(failures)
    return covered


def test_collector_never_answers_5xx(collector_app: FastAPI, collector: TestClient) -> None:
    covered = fuzz_app(collector_app)
    assert "POST /v1/events" in covered


def test_query_api_never_answers_5xx(api_app: FastAPI, api: TestClient) -> None:
    # /healthz answers 503 by design when a dependency is down; everything else is fuzzed.
    covered = fuzz_app(api_app)
    assert {"GET /v1/ads/popular_ads", "GET /api/v1/aggregates"} <= set(covered)
    assert len(covered) >= 14
