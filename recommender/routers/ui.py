"""The web page at `/`: plain HTML, CSS and JavaScript modules from recommender/static/.

No build step and no Node: the files are served as they are in the repository. Only files that
exist in that folder when the process starts can be served (no path from the URL ever reaches
the file system), and the page is kept out of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from recommender.errors import ServiceError

STATIC = Path(__file__).resolve().parent.parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page talks only to this origin; no inline script can run (an admin token is typed into it).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class StaticNotFound(ServiceError):
    status = 404
    code = "not_found"


def _files() -> dict[str, tuple[bytes, str]]:
    found = {}
    for path in sorted(STATIC.glob("*")):
        if path.is_file() and path.suffix in _TYPES:
            found[path.name] = (path.read_bytes(), _TYPES[path.suffix])
    return found


FILES = _files()
router = APIRouter(include_in_schema=False)


def _serve(name: str) -> Response:
    entry = FILES.get(name)
    if entry is None:
        raise StaticNotFound(f"no static file {name[:80]!r}")
    body, media_type = entry
    return Response(body, media_type=media_type, headers=_HEADERS)


@router.get("/")
async def page() -> Response:
    return _serve("index.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return _serve(name)
