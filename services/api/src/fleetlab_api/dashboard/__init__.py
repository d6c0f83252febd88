"""The web dashboard served at ``/``: pages, static files and the live event stream."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlab_api.dashboard import events, routes

router = APIRouter()
router.include_router(events.router)
router.include_router(routes.router)

__all__ = ["router"]
