"""Port checks, so a busy port fails fast with one clear line instead of a traceback."""

from __future__ import annotations

import socket
import time

from clickflow.runtime.exceptions import PortBusyError


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free(host: str, port: int, what: str, env_var: str) -> None:
    if not port_is_free(host, port):
        raise PortBusyError(
            f"port {port} on {host} is busy, needed by {what}: stop whatever uses it "
            f"(is another `clickflow up` running?) or set {env_var} to another port"
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
