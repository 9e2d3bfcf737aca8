"""The one table of data-plane (inference) routes, and what is built from it.

Each protocol lists its inference routes as `DataRoute`s. From that one list the app factory
registers them in FastAPI (so they are in the OpenAPI schema and `/docs`), and the fast path
(`inscale.http.fast_path`) serves them without FastAPI's routing, counting each under its
template (`path`). Each row carries its protocol's error table, so a route answers errors the
same whichever way it was dispatched.
"""

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from inscale.http.errors import ErrorTable, error_route_class

Endpoint = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class DataRoute:
    method: str
    path: str  # a template: `{name}` is one path segment
    endpoint: Endpoint  # reads its path parameters from `request.path_params`
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


def register(app: FastAPI, routes: Sequence[DataRoute]) -> None:
    for route in routes:
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=[route.method],
            summary=route.summary,
            openapi_extra=dict(route.openapi_extra),
            route_class_override=error_route_class(route.errors),
        )
