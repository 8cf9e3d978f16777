"""`GET /debug/profile?seconds=N`: a sampling CPU profile of every thread of this process.

py-spy (a sampling profiler reading the interpreter's memory from outside, so the process
needs no instrumentation) attaches to our own pid for N seconds and writes speedscope JSON
(open it at https://www.speedscope.app) or a flame graph SVG (open it in a browser). Off
unless ``CLICKFLOW_PROFILING=1``; when ``CLICKFLOW_API_TOKEN`` is set, it needs the bearer
token. One profile at a time per process. py-spy needs ptrace rights over the process (root,
or ``CAP_SYS_PTRACE`` in a container; under Yama, ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clickflow.config import Settings, get_settings

_bearer = HTTPBearer(auto_error=False)
_busy = asyncio.Lock()


class ProfileFormat(StrEnum):
    SPEEDSCOPE = "speedscope"
    FLAMEGRAPH = "flamegraph"


_MEDIA = {
    ProfileFormat.SPEEDSCOPE: ("application/json", "json"),
    ProfileFormat.FLAMEGRAPH: ("image/svg+xml", "svg"),
}


def py_spy_path() -> str | None:
    """py-spy beside this interpreter (a venv's bin/, not always on PATH), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


def _error(code: int, field: str, reason: str, **headers: str) -> HTTPException:
    return HTTPException(code, detail={"field": field, "reason": reason}, headers=headers or None)


def _settings(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


async def record_profile(seconds: float, fmt: ProfileFormat, rate: int, idle: bool) -> bytes:
    """Run py-spy against this process; returns the file it wrote."""
    exe = py_spy_path()
    if exe is None:
        raise _error(503, "py-spy", "py-spy is not installed (pip install py-spy)")
    with tempfile.TemporaryDirectory(prefix="clickflow-profile-") as tmp:
        out = Path(tmp) / f"profile.{_MEDIA[fmt][1]}"
        argv = [exe, "record", "--pid", str(os.getpid()), "--duration", f"{seconds:g}"]
        argv += ["--rate", str(rate), "--format", fmt.value, "--output", str(out)]
        argv += ["--nonblocking", "--threads"]  # never pause the service; one stack per thread
        if idle:
            argv.append("--idle")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise _error(504, "seconds", "py-spy did not finish in time") from None
        if proc.returncode != 0 or not out.is_file():
            reason = err.decode(errors="replace").strip()[-500:] or f"exit {proc.returncode}"
            raise _error(500, "py-spy", f"py-spy failed: {reason}")
        return out.read_bytes()


router = APIRouter(tags=["ops"])


@router.get(
    "/debug/profile",
    summary="Sampling CPU profile of every thread (py-spy); CLICKFLOW_PROFILING=1 enables it",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}, "image/svg+xml": {}}},
        401: {"description": "CLICKFLOW_API_TOKEN is set and the bearer token is missing/wrong"},
        404: {"description": "profiling is off"},
        409: {"description": "another profile is being taken"},
    },
)
async def profile(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    seconds: Annotated[float, Query(ge=0.5, le=300, description="how long to sample")] = 10,
    format: Annotated[ProfileFormat, Query(description="speedscope JSON or SVG")] = (
        ProfileFormat.SPEEDSCOPE
    ),
    rate: Annotated[int, Query(ge=1, le=1000, description="samples per second")] = 100,
    idle: Annotated[bool, Query(description="also sample threads that wait")] = False,
) -> Response:
    settings = _settings(request)
    expected = settings.api_token
    if expected:  # first: whether profiling is on is not told to strangers
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _error(
                status.HTTP_401_UNAUTHORIZED,
                "Authorization",
                "missing or invalid bearer token",
                **{"WWW-Authenticate": "Bearer"},
            )
    if not settings.profiling:
        raise _error(404, "CLICKFLOW_PROFILING", "profiling is off: set CLICKFLOW_PROFILING=1")
    if _busy.locked():
        raise _error(409, "seconds", "another profile is being taken in this process")
    async with _busy:
        data = await record_profile(seconds, format, rate, idle)
    media, ext = _MEDIA[format]
    name = f"clickflow-{os.getpid()}-{int(seconds)}s.{ext}"
    return Response(
        data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
