"""`GET /debug/profile?seconds=N`: a sampling CPU profile of every thread of this process.

py-spy (a sampling profiler reading the interpreter's memory from outside, so the process
needs no instrumentation) attaches to our own pid for N seconds and writes speedscope JSON
(open it at https://www.speedscope.app) or a flame graph SVG (open it in a browser). Off
unless ``CLICKFLOW_PROFILING=1``; when ``CLICKFLOW_API_TOKEN`` is set, it needs the bearer
token. One profile at a time per process. py-spy needs ptrace rights over the process (root,
or ``CAP_SYS_PTRACE`` in a container; under Yama, ``kernel.yama.ptrace_scope`` 0).

Without ``idle=true`` py-spy keeps only samples of threads running Python code: an idle
process gives none. That is an answer, not an error: 200 with an empty profile in the format
asked for (a speedscope file with one empty profile, or an SVG) whose title says so and
suggests ``idle=true``, with ``X-Profile-Samples: 0`` (the header counts the samples of any
speedscope profile too).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from xml.sax.saxutils import escape

import orjson
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


@dataclass(frozen=True)
class Profile:
    data: bytes
    #: Samples in the profile; None when the format does not say (a flame graph's SVG).
    samples: int | None


#: inferno's error when py-spy hands it no stacks: an idle process sampled without --idle.
_NO_STACKS = "No stack counts found"


def no_samples_note(seconds: float) -> str:
    return (
        f"no active samples in {seconds:g} s: no thread ran Python code while sampled; "
        "add idle=true to see where the threads wait"
    )


def empty_profile(fmt: ProfileFormat, seconds: float) -> bytes:
    """A profile with no samples that says why, in the format asked for: speedscope opens a
    file with one empty profile (named by the note), a browser shows the SVG's text."""
    note = no_samples_note(seconds)
    if fmt is ProfileFormat.SPEEDSCOPE:
        empty = {"type": "sampled", "name": note, "unit": "samples", "startValue": 0}
        empty |= {"endValue": 0, "samples": [], "weights": []}
        return orjson.dumps(
            {
                "$schema": "https://www.speedscope.app/file-format-schema.json",
                "profiles": [empty],
                "shared": {"frames": []},
                "activeProfileIndex": 0,
                "exporter": "clickflow",
                "name": note,
            }
        )
    text = escape(note)
    return (
        '<?xml version="1.0" standalone="no"?>'
        '<svg version="1.1" width="1200" height="60" viewBox="0 0 1200 60" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{text}</title>'
        f'<text x="600" y="34" text-anchor="middle" font-family="monospace" font-size="14">'
        f"{text}</text></svg>"
    ).encode()


def _speedscope_samples(data: bytes) -> int:
    try:
        doc = orjson.loads(data)
        return sum(len(p.get("samples") or ()) for p in doc.get("profiles") or ())
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return -1  # not ours to judge: passed on as py-spy wrote it


async def record_profile(seconds: float, fmt: ProfileFormat, rate: int, idle: bool) -> Profile:
    """Run py-spy against this process; returns the file it wrote, or an empty profile with
    a note when no thread was sampled (see the module docstring)."""
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
        reason = err.decode(errors="replace").strip()
        if proc.returncode != 0 and _NO_STACKS in reason:
            return Profile(empty_profile(fmt, seconds), 0)
        if proc.returncode != 0 or not out.is_file():
            reason = reason[-500:] or f"exit {proc.returncode}"
            raise _error(500, "py-spy", f"py-spy failed: {reason}")
        data = out.read_bytes()
    if fmt is ProfileFormat.SPEEDSCOPE:
        samples = _speedscope_samples(data)
        if samples == 0:
            return Profile(empty_profile(fmt, seconds), 0)
        return Profile(data, samples if samples > 0 else None)
    return Profile(data, None)


router = APIRouter(tags=["ops"])


@router.get(
    "/debug/profile",
    summary="Sampling CPU profile of every thread (py-spy); CLICKFLOW_PROFILING=1 enables it",
    response_class=Response,
    responses={
        200: {
            "description": (
                "the profile. An idle process sampled without idle=true has no samples: the "
                "answer is then still 200, an empty profile in the format asked for whose "
                "title says 'no active samples in N s ... add idle=true'"
            ),
            "content": {"application/json": {}, "image/svg+xml": {}},
            "headers": {
                "X-Profile-Samples": {
                    "description": "samples in the profile: 0 for an empty one; absent for "
                    "a flame graph with samples (the SVG does not count them)",
                    "schema": {"type": "integer"},
                }
            },
        },
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
    idle: Annotated[
        bool,
        Query(
            description="also sample threads that wait (without it, an idle process gives an "
            "empty profile)"
        ),
    ] = False,
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
        recorded = await record_profile(seconds, format, rate, idle)
    media, ext = _MEDIA[format]
    name = f"clickflow-{os.getpid()}-{int(seconds)}s.{ext}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if recorded.samples is not None:
        headers["X-Profile-Samples"] = str(recorded.samples)
    return Response(recorded.data, media_type=media, headers=headers)
