"""The live dashboard: static files served by the query API (no CDN: works offline)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def _read(name: str) -> bytes:
    f = resources.files(__name__).joinpath(name)
    if not f.is_file():
        raise HTTPException(404)
    return f.read_bytes()


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(_read("index.html"))


@router.get("/static/{name}")
def static(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or suffix not in _TYPES:
        raise HTTPException(404)
    return Response(_read(name), media_type=_TYPES[suffix], headers={"Cache-Control": "max-age=60"})
