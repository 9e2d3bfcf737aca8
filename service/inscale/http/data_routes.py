"""The one table of data-plane (inference) routes, and what they see and answer.

Each protocol lists its inference routes as `DataRoute`s. An endpoint takes a `DataCall` (the
request already read: headers, path parameters, the whole body) and returns a `Reply`; it knows
no server. Two drivers feed it: `inscale.http.direct_path`, inside inscale's own HTTP protocol,
for the common request (no ASGI cycle at all), and `inscale.http.fast_path`, the outermost ASGI
app, for every other request and under any other ASGI server. Both match URLs with one
`RouteTable`, answer errors with the route's own table (`serve`), and count into the same HTTP
series. The app factory also registers the routes in FastAPI, so they are in the OpenAPI
schema and `/docs`.
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from inscale.http.body import read_body
from inscale.http.errors import ClientGone, ErrorTable, error_route_class, response_for
from inscale.server_state import ServerState

JSON = b"application/json"
_PARAM = re.compile(r"\{(\w+)\}")
_SEEN_MAX = 1024  # paths whose match is remembered (see `RouteTable.match`)


@dataclass(slots=True)
class DataCall:
    """One inference request, read whole by its driver."""

    state: ServerState
    headers: Sequence[tuple[bytes, bytes]]  # names lowercased, as ASGI gives them
    params: dict[str, str]  # the path parameters; the call's own copy
    body: bytes  # within the size limit, Content-Encoding undone
    started: float  # `time.perf_counter()` when the request arrived
    # Done when the client has gone (the connection's future, or the driver's watcher):
    # the data plane then drops the request from its queue.
    gone: "asyncio.Future[Any] | None"

    def header(self, name: bytes) -> str | None:
        """A request header's value (`name` lowercase), None if absent."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Sequence[tuple[bytes, bytes]] = ()  # besides Content-Type and Content-Length

    @classmethod
    def of(cls, response: Response) -> "Reply":
        """A Starlette response (the error tables make those) as a reply."""
        content_type, headers = JSON, []
        for name, value in response.raw_headers:
            if name == b"content-type":
                content_type = value
            elif name != b"content-length":
                headers.append((name, value))
        return cls(response.status_code, bytes(response.body), content_type, headers)


def wire_headers(reply: Reply, request_id: str) -> list[tuple[bytes, bytes]]:
    """The reply's headers as both drivers write them: Content-Type and Content-Length, its
    own, and the request id."""
    return [
        (b"content-type", reply.content_type),
        (b"content-length", b"%d" % len(reply.body)),
        *reply.headers,
        (b"x-request-id", request_id.encode("latin-1")),
    ]


Endpoint = Callable[[DataCall], Coroutine[Any, Any, Reply]]  # a coroutine: the direct
# path runs it as its task


@dataclass(frozen=True, slots=True)
class DataRoute:
    method: str
    path: str  # a template: `{name}` is one path segment
    endpoint: Endpoint
    errors: ErrorTable
    summary: str
    openapi_extra: Mapping[str, Any] = field(default_factory=dict)

    def pattern(self) -> re.Pattern[str] | None:
        """The template as a regex with named groups; None when it has no parameter."""
        parts = _PARAM.split(self.path)
        if len(parts) == 1:
            return None
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        return re.compile(regex + "$")


class RouteTable:
    """Which data route a method and path mean, and its path parameters."""

    def __init__(self, routes: Sequence[DataRoute]) -> None:
        self._exact: dict[tuple[str, str], DataRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], DataRoute]] = []
        self._seen: dict[tuple[str, str], tuple[DataRoute | None, dict[str, str]]] = {}
        for route in routes:
            pattern = route.pattern()
            if pattern is None:
                self._exact[(route.method, route.path)] = route
            else:
                self._patterns.append((pattern, route))

    def match(self, method: str, path: str) -> tuple[DataRoute | None, dict[str, str]]:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        # A path is matched against the patterns once, not at every request: the paths a
        # server sees are few (a model's infer URL, the probes), and any number of others
        # (a scanner) only refill a bounded table.
        known = self._seen.get((method, path))
        if known is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            known = self._seen[(method, path)] = self._search(method, path)
        route, params = known
        return route, dict(params)  # the request's own: an endpoint may change its copy

    def _search(self, method: str, path: str) -> tuple[DataRoute | None, dict[str, str]]:
        for pattern, candidate in self._patterns:
            if candidate.method == method:
                found = pattern.match(path)
                if found:
                    return candidate, found.groupdict()
        return None, {}


async def serve(route: DataRoute, call: DataCall, method: str, path: str) -> Reply:
    """The route's reply to `call`, errors answered with its protocol's table."""
    try:
        return await route.endpoint(call)
    except Exception as exc:
        return error_reply(route, method, path, exc)
    except asyncio.CancelledError:
        if not client_gone(call):
            raise  # the server is cancelling the request, not its client
        return error_reply(route, method, path, ClientGone())


def error_reply(route: DataRoute, method: str, path: str, exc: Exception) -> Reply:
    return Reply.of(response_for(method, path, exc, route.errors))


def client_gone(call: DataCall) -> bool:
    """Whether a `CancelledError` in the call means its client went away (the data plane
    drops a request whose `gone` completes, and its caller then sees `CancelledError`)."""
    gone = call.gone
    return gone is not None and gone.done()


def register(app: FastAPI, routes: Sequence[DataRoute]) -> None:
    """The routes in FastAPI's router, for the OpenAPI schema and for an app served without
    the data path in front (the drivers take these requests before FastAPI sees them)."""
    for route in routes:
        app.router.add_api_route(
            route.path,
            _fastapi_endpoint(route),
            methods=[route.method],
            summary=route.summary,
            openapi_extra=dict(route.openapi_extra),
            route_class_override=error_route_class(route.errors),
        )


def _fastapi_endpoint(route: DataRoute) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        state: ServerState = request.app.state.server
        body = await read_body(request, state.settings.max_body_bytes)
        params = dict(request.path_params)
        reply = await route.endpoint(
            DataCall(state, request.scope["headers"], params, body, started, None)
        )
        return to_response(reply)

    return endpoint


def to_response(reply: Reply) -> Response:
    headers = [(b"content-type", reply.content_type), *reply.headers]
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = [*response.raw_headers, *headers]
    return response
