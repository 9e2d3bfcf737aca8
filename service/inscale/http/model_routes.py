"""Model listing, model metadata and health: `GET /models`, `/models/{name}`, `/health/*`."""

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from inscale.http.context import context
from inscale.models.registry import VersionEntry
from inscale.models.signature import TensorSpec
from inscale.models.version import ModelRunner
from inscale.protocols.json_values import dumps

router = APIRouter()


def _json(document: object, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": spec.datatype.name,
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def _version_summary(entry: VersionEntry) -> dict[str, Any]:
    summary: dict[str, Any] = {"version": entry.version, "state": entry.state.value}
    if entry.reason:
        summary["reason"] = entry.reason
    if entry.runner is not None:
        summary["load_seconds"] = round(entry.load_seconds, 4)
    return summary


def _runner_detail(runner: ModelRunner) -> dict[str, Any]:
    stats = runner.batcher_stats()
    batching = runner.config.batching
    return {
        "inputs": [_tensor(s) for s in runner.signature.inputs],
        "outputs": [_tensor(s) for s in runner.signature.outputs],
        "providers": list(runner.providers),
        "batchable": runner.signature.batchable,
        "batching": {
            "enabled": runner.batching,
            "max_batch_size": runner.max_rows,
            "max_queue_delay_ms": batching.max_queue_delay_ms,
            "preferred_batch_sizes": batching.preferred_batch_sizes,
            "max_queue_size": batching.max_queue_size,
        },
        "instances": runner.config.instances,
        "timeout_ms": runner.config.timeout_ms,
        "stats": {
            "requests": stats.submitted,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "rejected": stats.rejected,
            "timed_out": stats.expired,
            "cancelled": stats.cancelled,
            "runs": stats.runs,
            "rows": stats.rows,
            "queued": stats.queued,
            "running": stats.running,
            "queue_seconds": stats.queue_seconds,
            "compute_seconds": stats.compute_seconds,
        },
    }


@router.get("/models", summary="Every model and version with its state")
async def list_models(request: Request) -> Response:
    registry = context(request).registry
    return _json(
        {
            "models": [
                {"name": name, "versions": [_version_summary(e) for e in registry.entries(name)]}
                for name in registry.names()
            ]
        }
    )


@router.get("/models/{name}", summary="A model's signature, providers, batching and counters")
async def model_metadata(name: str, request: Request) -> Response:
    registry = context(request).registry
    versions = []
    for entry in registry.entries(name):
        summary = _version_summary(entry)
        if entry.runner is not None:
            summary.update(_runner_detail(entry.runner))
        versions.append(summary)
    return _json({"name": name, "versions": versions})


@router.get("/health/live", summary="The process is up and its event loop answers")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Models are loaded and the server accepts work")
async def ready(request: Request) -> Response:
    is_ready = context(request).ready()
    return _json({"ready": is_ready}, 200 if is_ready else 503)
