"""inscale's own routes beside the protocols: `GET /models`, `/models/{name}`, `/health/*`,
and `GET /metrics` when metrics are on. They are inscale's REST API, as `/predict` is, and
answer errors with its table."""

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from inscale.batch_events import DropReason
from inscale.http import health
from inscale.http.context import context
from inscale.http.errors import error_route_class
from inscale.http.responses import json_response
from inscale.metrics.prometheus import Metrics
from inscale.models.registry import ModelRegistry, VersionEntry
from inscale.models.version import ModelVersion
from inscale.protocols.predict.errors import PREDICT_STATUS
from inscale.signature import TensorSpec

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.name, "shape": spec.dims}


def _version_summary(entry: VersionEntry) -> dict[str, Any]:
    summary: dict[str, Any] = {"version": entry.version, "state": entry.state.value}
    if entry.reason:
        summary["reason"] = entry.reason
    if entry.model is not None:
        summary["load_seconds"] = round(entry.load_seconds, 4)
    return summary


def _model_detail(model: ModelVersion) -> dict[str, Any]:
    stats = model.statistics()
    load = model.load()
    batching = model.config.batching
    return {
        "inputs": [_tensor(s) for s in model.signature.inputs],
        "outputs": [_tensor(s) for s in model.signature.outputs],
        "providers": list(model.providers),
        "batchable": model.signature.batchable,
        "batching": {
            "enabled": model.batching,
            "max_batch_size": model.max_rows,
            "max_queue_delay_ms": batching.max_queue_delay_ms,
            "preferred_batch_sizes": batching.preferred_batch_sizes,
            "max_queue_size": batching.max_queue_size,
            "max_request_rows": model.max_request_rows,
            "default_priority_level": batching.default_priority_level,
            "max_starvation_ms": batching.max_starvation_ms,
        },
        "admission": model.admission_report(),
        "drift": model.drift_report(),
        "instances": model.config.instances,
        "timeout_ms": model.config.timeout_ms,
        "stats": {
            "requests": stats.submitted,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "bad_input": stats.refused,
            "rejected": stats.dropped[DropReason.REJECTED],
            "timed_out": stats.dropped[DropReason.EXPIRED],
            "cancelled": stats.dropped[DropReason.CANCELLED],
            "runs": stats.runs,
            "rows": stats.rows,
            "queued": load.queued,
            "running": load.running_batches,
            "queue_seconds": stats.queue_seconds,
            "compute_seconds": stats.compute_seconds,
        },
    }


async def list_models(request: Request) -> Response:
    """Every model and version with its state."""
    registry = context(request).plane.registry
    return json_response(
        {
            "models": [
                {"name": name, "versions": [_version_summary(e) for e in registry.entries(name)]}
                for name in registry.names()
            ]
        }
    )


async def model_metadata(name: str, request: Request) -> Response:
    """A model's signature, providers, batching and counters."""
    versions = []
    for entry in context(request).plane.registry.entries(name):
        summary = _version_summary(entry)
        if entry.model is not None:
            summary.update(_model_detail(entry.model))
        versions.append(summary)
    return json_response({"name": name, "versions": versions})


def native_router(metrics: Metrics | None, registry: ModelRegistry) -> APIRouter:
    router = APIRouter(route_class=error_route_class(PREDICT_STATUS))
    router.add_api_route("/models", list_models, methods=["GET"], summary=list_models.__doc__)
    router.add_api_route(
        "/models/{name}", model_metadata, methods=["GET"], summary=model_metadata.__doc__
    )
    router.add_api_route("/health/live", health.live, methods=["GET"], summary=health.live.__doc__)
    router.add_api_route(
        "/health/ready", health.ready, methods=["GET"], summary=health.ready.__doc__
    )
    if metrics is not None:

        async def scrape() -> Response:
            return Response(metrics.render(registry), media_type=TEXT_FORMAT)

        router.add_api_route(
            "/metrics",
            scrape,
            methods=["GET"],
            summary="Prometheus metrics (text format)",
            responses={
                200: {
                    "description": "The exposition, Prometheus text format 0.0.4",
                    "content": {TEXT_FORMAT.split(";")[0]: {"schema": {"type": "string"}}},
                }
            },
        )
    return router
