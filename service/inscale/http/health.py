"""Liveness and readiness, served at `/health/*` and, by the V2 routes, at `/v2/health/*`."""

from starlette.requests import Request
from starlette.responses import Response

from inscale.http.context import context
from inscale.http.responses import json_response


async def live() -> Response:
    """The process is up and its event loop answers."""
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    """Models are loaded and the server accepts work (503 until then, and while draining)."""
    is_ready = context(request).ready()
    return json_response({"ready": is_ready}, 200 if is_ready else 503)
