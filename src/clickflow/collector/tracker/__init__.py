"""The browser tracker (``/js/clickflow.js``) and a demo page using it (``/demo``).

Both are static files of this package, read once; the tracker is served with a long cache
lifetime and no CORS requirement (a ``<script>`` tag loads it from any origin).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)


@cache
def read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


@router.get("/js/clickflow.js")
def tracker_script() -> Response:
    return Response(
        read("clickflow.js"),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("/demo", response_class=HTMLResponse)
@router.get("/demo/{page}", response_class=HTMLResponse)
def demo(page: str = "") -> HTMLResponse:
    """One page for every path: its script takes the page type from the path."""
    return HTMLResponse(read("demo.html"))
