"""The HTTP side of the server: the FastAPI app with every route in its request-id and metrics
layers, and in front of it the data path that serves the inference routes in one layer."""

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from inscale import __version__
from inscale.http import data_routes
from inscale.http.docs import install_docs
from inscale.http.errors import install_error_handlers
from inscale.http.fast_path import FastPath
from inscale.http.native_routes import native_router
from inscale.http.request_id import RequestIdMiddleware
from inscale.metrics.http import HttpSeries, MetricsMiddleware
from inscale.metrics.prometheus import Metrics
from inscale.protocols.predict import routes as predict
from inscale.protocols.predict.errors import PREDICT_STATUS
from inscale.protocols.v2 import routes as v2_routes
from inscale.server_state import ServerState

# Its state (a mapping) is handed to every request's scope and to uvicorn's protocol.
Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]


def http_app(state: ServerState, metrics: Metrics | None, lifespan: Lifespan) -> ASGIApp:
    app = FastAPI(
        title="inscale",
        version=__version__,
        summary="ONNX model serving with dynamic batching",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.server = state
    install_error_handlers(app, PREDICT_STATUS)
    # One table of inference routes: registered in FastAPI (OpenAPI, /docs) and dispatched
    # by the fast path, which also tells the metrics middleware their templates.
    inference = (*predict.DATA_ROUTES, *v2_routes.DATA_ROUTES)
    data_routes.register(app, inference)
    app.include_router(native_router(metrics, state.plane.registry))
    app.include_router(v2_routes.router)
    series = None if metrics is None else HttpSeries(metrics)
    rest: ASGIApp = app
    if series is not None:
        # Inside the request id's layer: it must sit inside an `async def` one.
        rest = MetricsMiddleware(rest, series)
    # The inference routes first, with their request id and series in the same one layer.
    return FastPath(RequestIdMiddleware(rest), app, inference, series)
