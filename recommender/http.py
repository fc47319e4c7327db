"""What every router shares: the JSON response, strict parameter parsing, admin bodies, actors.

Ids, `k` and versions are ASCII digits matched in full: `\\d` and `$` would let '٤٢', '４２' or
'42\\n' through as 42 (DESIGN §3).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from model_registry.control import ACTOR
from model_registry.registry import VERSION_RE
from recommender.errors import InvalidRequest

MAX_ID = 2**63 - 1
_UINT = re.compile(r"[0-9]{1,19}")
Body = TypeVar("Body", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def query_params(raw: bytes) -> dict[str, str]:
    """Query parameters, last value wins; plain ASCII needs no unquoting (the common case)."""
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    return dict(pair.partition("=")[::2] for pair in text.split("&") if pair)


def int_param(name: str, raw: str, low: int, high: int) -> int:
    if not _UINT.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise InvalidRequest(f"version must look like v0.3, got {str(version)[:40]!r}")
    return version


def actor(x_actor: str | None) -> str:
    """Who acts, from X-Actor; absent means 'admin'. A value that is not a plain name is an
    error, never silently someone else (and '@' cannot make it look like another host)."""
    if x_actor is None:
        return "admin"
    if not ACTOR.fullmatch(x_actor):
        raise InvalidRequest("X-Actor: 1-64 letters, digits or . _ : - characters")
    return x_actor


async def read_body(request: Request, model: type[Body]) -> Body:
    """Parse an admin body only after authentication ran (the route's dependencies)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc.errors())) from None


def validation_detail(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}"
        for e in errors
    )[:500]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that reads its body by hand."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
