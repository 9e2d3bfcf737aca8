"""The one place where core errors become HTTP statuses and JSON bodies.

Handlers are found by walking the exception's class hierarchy, so `PayloadTooLarge` (a kind
of `InvalidInput`) gets its own row while the rest of the family falls back to 400. Bodies
are always `{"error": "..."}`: clients such as tritonclient fail with an unhelpful message on
an empty error body. 5xx bodies say only that the server failed, with the request id to find
the cause in the logs.
"""

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from inscale.errors import (
    DeadlineExceeded,
    InscaleError,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    Unsupported,
)
from inscale.logs import request_id

log = logging.getLogger(__name__)

STATUS: dict[type[InscaleError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    ModelNotFound: 404,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 504,
    Unsupported: 501,
    ModelLoadError: 400,
    ModelExecutionError: 500,
}
# The Open Inference Protocol's clients expect Triton's mapping, where a request that timed
# out in the queue is "unavailable" (503) like a full queue, not a gateway timeout.
V2_STATUS: dict[type[InscaleError], int] = {**STATUS, DeadlineExceeded: 503}


class ClientGone(Exception):
    """The client disconnected while its request waited; nobody will read an answer."""


def status_for(exc: InscaleError, table: dict[type[InscaleError], int] = STATUS) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return 500


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


def response_for(request: Request, exc: Exception) -> Response:
    """The response for any exception escaping a route (the data-plane fast path uses it too)."""
    if isinstance(exc, ClientGone):
        # Nobody reads this; 499 (nginx's "client closed request") keeps access logs honest.
        return error_response(499, "client closed the request")
    if not isinstance(exc, InscaleError):
        log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
        return _server_failed(500)
    status = status_for(exc, V2_STATUS if request.url.path.startswith("/v2/") else STATUS)
    # These 5xx are about the request or the server's load, not a failure: say what happened.
    said = ModelNotReady | QueueFull | DeadlineExceeded | Unsupported
    if status >= 500 and not isinstance(exc, said):
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message, exc_info=exc)
        return _server_failed(status)
    headers = None
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return error_response(status, exc.message, headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    return response_for(request, exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path}" + (
            f" (allowed: {allowed})" if allowed else ""
        )
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InscaleError, _on_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_error)
