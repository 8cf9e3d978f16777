"""`clickflow process`'s HTTP port: an explicit port must be free; the default falls back."""

from __future__ import annotations

import socket

import pytest

from clickflow.config import Settings
from clickflow.observability.process_http import choose_port
from clickflow.runtime.exceptions import PortBusyError
from clickflow.runtime.ports import free_port


def test_explicit_busy_port_fails_fast_and_default_falls_back() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"port {port}.*CLICKFLOW_PROCESS_PORT"):
            choose_port("127.0.0.1", port, explicit=True)
        other = choose_port("127.0.0.1", port, explicit=False)  # the default port taken
        assert other != port and other > 0
    free = free_port()
    assert choose_port("127.0.0.1", free, explicit=True) == free
    assert choose_port("127.0.0.1", free, explicit=False) == free


def test_a_configured_port_counts_as_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKFLOW_PROCESS_PORT", "8123")
    assert "process_port" in Settings().model_fields_set
    monkeypatch.delenv("CLICKFLOW_PROCESS_PORT")
    assert "process_port" not in Settings().model_fields_set
