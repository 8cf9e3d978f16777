"""uvicorn without its ten wake-ups a second, for every HTTP service of clickflow.

uvicorn's ``Server.main_loop`` sleeps 0.1 s between ticks only to refresh the ``date`` header
once a second and to notice ``should_exit``: 0.11% of a core per idle server, and `up` runs
six of them. Here a tick is a second (the header still changes once a second) and setting
``should_exit`` (a signal handler, or ``stop()`` from another thread) wakes the loop at once,
so stopping is as quick as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

#: Seconds between ticks when nothing asks the server to stop.
TICK_SECONDS = 1.0


class QuietServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._should_exit = False
        super().__init__(config)

    @property  # type: ignore[override]
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        loop, wake = self._loop, self._wake
        if value and loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is already closed: nothing left to wake
                pass

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # on_tick refreshes the date header when counter % 10 == 0: every tick here.
            counter = (counter + 10) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            except TimeoutError:
                pass
            should_exit = await self.on_tick(counter)


def run_app(app: Any, **config: Any) -> None:
    """``uvicorn.run(app, **config)`` on a `QuietServer`: exits with status 3 when the server
    could not start (a busy port), as uvicorn.run does."""
    server = QuietServer(uvicorn.Config(app, **config))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(3)
