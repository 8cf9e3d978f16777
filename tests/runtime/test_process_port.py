"""`clickflow process`'s HTTP port: an explicit port must be free; the default falls back,
also when two processes start at the same moment."""

from __future__ import annotations

import socket

import pytest

from clickflow.config import Settings
from clickflow.observability.process_http import listen_socket
from clickflow.runtime.exceptions import PortBusyError
from clickflow.runtime.ports import free_port


def test_explicit_busy_port_fails_fast_and_default_falls_back() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"port {port}.*CLICKFLOW_PROCESS_PORT"):
            listen_socket("127.0.0.1", port, explicit=True)
        with listen_socket("127.0.0.1", port, explicit=False) as other:  # the default taken
            assert other.getsockname()[1] not in (port, 0)
    free = free_port()
    with listen_socket("127.0.0.1", free, explicit=True) as sock:
        assert sock.getsockname()[1] == free


def test_two_processes_on_the_default_port_both_get_one() -> None:
    """Both `process` starts of `telecom-ingest` and `telecom-aggregate` saw the default port
    free, and the second failed to bind it: the port is now held from the moment it is chosen."""
    default = free_port()
    with listen_socket("127.0.0.1", default, explicit=False) as first:
        with listen_socket("127.0.0.1", default, explicit=False) as second:
            ports = {first.getsockname()[1], second.getsockname()[1]}
    assert len(ports) == 2 and default in ports


def test_a_configured_port_counts_as_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKFLOW_PROCESS_PORT", "8123")
    assert "process_port" in Settings().model_fields_set
    monkeypatch.delenv("CLICKFLOW_PROCESS_PORT")
    assert "process_port" not in Settings().model_fields_set
