"""Processes started by tests: stopped on every exit path, and none outlives the session.

The pytest process becomes a child subreaper (Linux), so a process whose parent died (a
service of a killed `clickflow up`, which starts each service in its own session) is
re-parented to pytest instead of init. At the end of the session every descendant of pytest
is therefore visible: `leftovers()` lists them and the root conftest kills them and fails
the run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing import resource_tracker

import psutil

PR_SET_CHILD_SUBREAPER = 36

_started: list[subprocess.Popen] = []


def become_subreaper() -> bool:
    """Adopt orphaned descendants (so they can be found and reaped); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def spawn(cmd: Sequence[str], **kwargs) -> subprocess.Popen:
    """Popen in a new process group, remembered so the session can stop it if a test did not."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def wait_catches(proc: subprocess.Popen, sig: int, timeout: float = 60.0) -> None:
    """Wait until ``proc`` has installed a handler for ``sig`` (Linux: its ``SigCgt`` mask).

    A SIGTERM sent while the interpreter is still starting (before `python -m clickflow`
    runs its first line: seconds on a busy machine) kills the process instead of stopping
    it cleanly; a test that stops what it just started waits for this first."""
    status = f"/proc/{proc.pid}/status"
    if not os.path.exists(status):
        return  # not Linux: nothing to read
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # it ended: the caller's own checks say why
        try:
            with open(status) as f:
                caught = next((ln.split()[1] for ln in f if ln.startswith("SigCgt:")), "0")
        except FileNotFoundError:
            return  # it ended and was reaped

        if int(caught, 16) & (1 << (sig - 1)):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {proc.pid} never installed a handler for signal {sig}")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group of `pid`, or only `pid` if it shares pytest's group."""
    try:
        group = os.getpgid(pid)
        if group == os.getpgid(0):
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(procs: Sequence[psutil.Process]) -> None:
    """SIGKILL each process and its process group, then wait for them to go."""
    for p in procs:
        _signal_group(p.pid, signal.SIGKILL)
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs), timeout=10)
    reap_zombies()


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Send `sig` to the process group of `proc`; after `timeout` s SIGKILL it and every
    descendant (also those in sessions of their own). Returns the exit code, if it exited."""
    tree = _descendants(proc.pid)
    _signal_group(proc.pid, sig)
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    tree += _descendants(proc.pid)
    if code is None:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
    kill_tree([p for p in tree if _alive(p)])
    return code


def stop_all() -> None:
    """Stop every process started with `spawn` that is still running."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None or any(_alive(p) for p in _descendants(proc.pid)):
            stop_tree(proc, signal.SIGKILL, timeout=10)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_zombies() -> None:
    """Collect exit statuses of adopted children nobody waits for."""
    for p in psutil.Process().children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(p.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def _helpers() -> set[int]:
    """Interpreter-wide helpers that live as long as pytest itself, by design."""
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)  # noqa: SLF001
    return {tracker} if tracker else set()


def leftovers() -> list[psutil.Process]:
    """Live descendants of this process, apart from interpreter helpers."""
    reap_zombies()
    helpers = _helpers()
    return [
        p for p in psutil.Process().children(recursive=True) if p.pid not in helpers and _alive(p)
    ]


def describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid}: {' '.join(p.cmdline())[:160]}"
    except psutil.Error:
        return f"pid {p.pid}"
