"""A pure ASGI middleware giving every request an id (the client's `X-Request-ID` if sent).

Pure ASGI rather than Starlette's BaseHTTPMiddleware: that one costs a task and a memory
stream per request, which shows on a 100-microsecond request path. The data path
(`inscale.http.fast_path`) does the same for the inference routes with `client_request_id`.
"""

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inscale.logs import MAX_ID_LENGTH, new_request_id, request_id

_HEADER = b"x-request-id"
# What may not be echoed in a header value (the same rule uvicorn checks responses against).
_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def client_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The client's id, cut to `MAX_ID_LENGTH`; None if it sent none, or one that cannot be
    echoed as it is (a control character)."""
    for name, value in headers:
        if name == _HEADER:
            value = value[:MAX_ID_LENGTH]
            return None if _UNSAFE.search(value) else value.decode("latin-1")
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = client_request_id(scope["headers"]) or new_request_id()
        token = request_id.set(rid)
        raw = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (_HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
