"""FastAPI dependencies shared by the routers: the service of this app, and admin authentication.

Admin routes declare `AdminDep` and read their body themselves *after* it has run, so an
unauthenticated caller is refused before a single body byte is parsed (DESIGN §6).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from recommender.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
