"""How a core error becomes an HTTP response, given a protocol's own status table.

Each protocol keeps its table (core exception -> status) in its own module: `/predict` in
`inscale.protocols.predict.errors` (inscale's own routes, `/models` and health, answer with it
too: they are the same REST API), V2 in `inscale.protocols.v2.errors`. A route's table is fixed
where the route is registered (`error_route_class`, and the data-plane route table for the fast
path), so no status is chosen by looking at the URL.

Statuses are found by walking the exception's class hierarchy (`inscale.errors.lookup`).
Bodies are always `{"error": "..."}`: clients such as tritonclient fail with an unhelpful
message on an empty error body. 5xx bodies say only that the server failed, with the request
id to find the cause in the logs.
"""

import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from inscale.errors import (
    DeadlineExceeded,
    InscaleError,
    ModelNotReady,
    QueueFull,
    Unsupported,
    lookup,
    shortened,
)
from inscale.logs import request_id

log = logging.getLogger(__name__)

ErrorTable = Mapping[type[InscaleError], int]

# 5xx that describe the request or the server's load rather than a failure: their message
# is sent as it is. Any other 5xx is logged and answered with the request id only.
_SAID = (ModelNotReady, QueueFull, DeadlineExceeded, Unsupported)


class ClientGone(Exception):
    """The client disconnected while its request waited; nobody will read an answer."""


def status_for(exc: InscaleError, table: ErrorTable) -> int:
    return lookup(exc, table, 500)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _server_failed(status: int) -> Response:
    rid = request_id.get() or "-"
    return error_response(status, f"the server failed to handle this request (request id {rid})")


def response_for(method: str, path: str, exc: Exception, table: ErrorTable) -> Response:
    """The response for an exception escaping a route whose protocol uses `table`; `method`
    and `path` name the request in the log line of a server failure."""
    if isinstance(exc, ClientGone):
        # Nobody reads this; 499 (nginx's "client closed request") keeps access logs honest.
        return error_response(499, "client closed the request")
    if not isinstance(exc, InscaleError):
        log.error("%s %s crashed", method, shortened(path), exc_info=exc)
        return _server_failed(500)
    status = status_for(exc, table)
    if status >= 500 and not isinstance(exc, _SAID):
        log.error("%s %s failed: %s", method, shortened(path), exc.message, exc_info=exc)
        return _server_failed(status)
    headers = None
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(status, exc.message, headers)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


ERROR_BODY = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
# What any route may answer besides its table's statuses: bad parameters (400), the connection
# layer's read timeout (408) and caps (503), a failure of the server itself (500).
_ANY_ROUTE = (400, 408, 500, 503)


def documented_errors(table: ErrorTable) -> dict[int | str, dict[str, Any]]:
    """The error answers a route with `table` can give, for its OpenAPI entry: the one
    table that picks a status also documents it, so the schema cannot fall behind."""
    statuses = sorted({*table.values(), *_ANY_ROUTE})
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": ERROR_BODY}},
        }
        for status in statuses
    }


def error_route_class(table: ErrorTable) -> type[APIRoute]:
    """A FastAPI route class answering the core's errors with `table` (one per protocol),
    and documenting those answers in the route's OpenAPI entry."""
    errors = documented_errors(table)

    class ProtocolRoute(APIRoute):
        def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
            kwargs["responses"] = {**errors, **(kwargs.get("responses") or {})}
            super().__init__(path, endpoint, **kwargs)

        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except (StarletteHTTPException, RequestValidationError):
                    raise  # FastAPI's own errors: the app's handlers below
                except Exception as exc:
                    return response_for(request.method, request.url.path, exc, table)

            return handle

    return ProtocolRoute


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {shortened(request.url.path)}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {shortened(request.url.path)}" + (
            f" (allowed: {allowed})" if allowed else ""
        )
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")


def install_error_handlers(app: FastAPI, table: ErrorTable) -> None:
    """FastAPI's own errors (no route, bad method, bad parameters), and `table` for anything
    raised outside a protocol's routes."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return response_for(request.method, request.url.path, exc, table)

    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, on_error)
