"""``python -m clickflow``: the command line.

A SIGTERM that arrives while the interpreter is still importing (seconds on a busy machine)
is a stop requested before anything started: exit cleanly. Each command installs its own
handlers (or uvicorn's) once it runs."""

import signal


def _stopped_while_starting(_sig: int, _frame: object) -> None:
    raise SystemExit(0)


signal.signal(signal.SIGTERM, _stopped_while_starting)

from clickflow.cli import app  # noqa: E402 - after the handler, on purpose

app()
