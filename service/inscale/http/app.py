"""The app factory. Everything long-lived is created here or in the lifespan, not at import.

Models load in the background after the server starts listening, so liveness answers at
once and readiness turns true when loading is done (the Kubernetes startup probe waits).
"""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from inscale import __version__
from inscale.dataplane import DataPlane
from inscale.http import data_routes
from inscale.http.context import AppContext
from inscale.http.docs import install_docs
from inscale.http.errors import install_error_handlers
from inscale.http.fast_path import FastPath
from inscale.http.native_routes import native_router
from inscale.http.request_id import RequestIdMiddleware
from inscale.logs import configure_logging
from inscale.metrics.http import MetricsMiddleware
from inscale.metrics.prometheus import Metrics
from inscale.models.registry import ModelRegistry
from inscale.models.repository import ModelRepository
from inscale.protocols.predict import routes as predict
from inscale.protocols.predict.errors import PREDICT_STATUS
from inscale.protocols.v2 import routes as v2_routes
from inscale.settings import ModelControl, ServerSettings

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings) -> ASGIApp:
    metrics = None
    if settings.metrics:
        metrics = Metrics(CollectorRegistry(), settings.metrics_multiprocess_dir)
    registry = ModelRegistry(
        ModelRepository(settings.repository_path()),
        list(settings.providers),
        drain_timeout_s=settings.shutdown_grace_s,
        metrics_factory=metrics.model if metrics else None,
    )
    plane = DataPlane(
        registry,
        default_model=settings.resolved_default_model(),
        retry_after_s=settings.retry_after_s,
    )
    ctx = AppContext(settings=settings, plane=plane)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_initial_load(ctx))
        refreshing = asyncio.create_task(metrics.refresh_forever(registry)) if metrics else None
        try:
            yield
        finally:
            ctx.shutting_down = True
            for task in (loading, refreshing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await registry.shutdown()
            if metrics is not None:
                metrics.close()
            log.info("shut down: every model drained")

    app = FastAPI(
        title="inscale",
        version=__version__,
        summary="ONNX model serving with dynamic batching",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.ctx = ctx
    install_error_handlers(app, PREDICT_STATUS)
    # One table of inference routes: registered in FastAPI (OpenAPI, /docs) and dispatched
    # by the fast path, which also tells the metrics middleware their templates.
    inference = (*predict.DATA_ROUTES, *v2_routes.DATA_ROUTES)
    data_routes.register(app, inference)
    app.include_router(native_router(metrics, registry))
    app.include_router(v2_routes.router)
    served: ASGIApp = FastPath(app, inference)
    if metrics is not None:
        # Around everything but the request id (it must sit inside an `async def` layer).
        served = MetricsMiddleware(served, metrics)
    return RequestIdMiddleware(served)


async def _initial_load(ctx: AppContext) -> None:
    try:
        if ctx.settings.model_control is ModelControl.ALL:
            log.info("loading models from %s", ctx.plane.registry.repository.root)
            await ctx.plane.registry.load_all()
    finally:
        ctx.startup_done = True
        _tune_gc()
    if not ctx.plane.registry.any_ready() and ctx.settings.model_control is ModelControl.ALL:
        log.error("no model could be loaded from %s", ctx.plane.registry.repository.root)


def _tune_gc() -> None:
    """Keep garbage collection off the request path's tail.

    Every request allocates thousands of short-lived objects, so the collector runs often,
    and each full pass walks everything loaded at start (FastAPI, numpy, ORT bindings).
    Freezing what exists after loading takes it out of every later pass, and a larger
    young generation makes passes rarer. Measured on digits-wide at concurrency 32 (one
    core): p99 41 ms -> 17 ms, with requests/s unchanged or better.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def create_app_from_env() -> ASGIApp:
    """Entry point for uvicorn worker processes: settings come from INSCALE_* variables."""
    settings = ServerSettings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    return create_app(settings)
