"""The Open Inference Protocol (KServe V2) over HTTP: the routes, in the protocol's order.

Each route reads the request, asks the core (registry, runner) and encodes the answer; the
protocol's formats live in `codec`, `config_json` and `stats`. Errors are the core's
exceptions, mapped to statuses in `service/http/errors.py` like every other route's.

`infer` is also dispatched by the fast path (`service/http/fast_path.py`), which passes only
the request: path parameters are read from `request.path_params` on every route.
"""

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from inscale import __version__
from inscale.errors import InvalidInput, ModelNotFound, Unsupported
from inscale.http.body import infer_while_connected, read_body
from inscale.http.context import context
from inscale.models.registry import ModelRegistry, ModelState
from inscale.models.repository import check_model_name
from inscale.models.version import ModelRunner
from inscale.protocols.json_values import dumps
from inscale.protocols.v2 import codec, config_json, stats

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

# Only what is implemented. `parameters`: request and tensor parameters are read (timeout,
# priority, binary_data_output, binary_data, binary_data_size).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
)
MODEL = "/models/{name}"
VERSION = "/models/{name}/versions/{version}"

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "inputs": [
                        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
                    ]
                },
                "schema": {"type": "object", "required": ["inputs"]},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header, then binary tensors; the header "
                "Inference-Header-Content-Length gives the JSON part's length.",
            },
        },
    }
}


def _json(document: object, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")


def _version(request: Request) -> int | None:
    text = request.path_params.get("version")
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidInput(f"model version '{text}' is not a positive integer")
    return int(text)


def _runner(request: Request) -> ModelRunner:
    return context(request).registry.get(request.path_params["name"], _version(request))


async def _json_body(request: Request) -> dict[str, Any]:
    """An optional JSON object body: empty, `{}`, or carrying `parameters`."""
    body = await read_body(request, context(request).settings.max_body_bytes)
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput("the body must be a JSON object")
    return document


# -- server -----------------------------------------------------------------------------


@router.get("", summary="Server metadata and the protocol extensions it implements")
async def server_metadata() -> Response:
    return _json({"name": "inscale", "version": __version__, "extensions": list(EXTENSIONS)})


@router.get("/health/live", summary="The server process is up")
async def server_live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="The server accepts inference requests")
async def server_ready(request: Request) -> Response:
    is_ready = context(request).ready()
    return _json({"ready": is_ready}, 200 if is_ready else 503)


# -- models (stats first: `/models/stats` must not be read as a model named "stats") -------


@router.get("/models/stats", summary="Statistics of every loaded model version")
@router.get(MODEL + "/stats", summary="Statistics of a model's loaded versions")
@router.get(VERSION + "/stats", summary="Statistics of one model version")
async def model_statistics(request: Request) -> Response:
    registry = context(request).registry
    name = request.path_params.get("name")
    if name is None:
        runners = [r for n in registry.names() for r in _loaded(registry, n)]
    elif _version(request) is not None:
        runners = [_runner(request)]
    else:
        runners = _loaded(registry, name)
    return _json({"model_stats": [stats.model_stats(r) for r in runners]})


def _loaded(registry: ModelRegistry, name: str) -> list[ModelRunner]:
    return [e.runner for e in registry.entries(name) if e.runner is not None]


@router.get(MODEL + "/ready", summary="The model's newest version can serve")
@router.get(VERSION + "/ready", summary="This model version can serve")
async def model_ready(request: Request) -> Response:
    runner = _runner(request)  # 404 if unknown, 503 if not ready
    return _json({"name": runner.name, "version": str(runner.version), "ready": True})


@router.get(MODEL, summary="Model metadata: versions, platform, inputs and outputs")
@router.get(VERSION, summary="Model metadata of one version")
async def model_metadata(request: Request) -> Response:
    runner = _runner(request)
    ready = [
        e.version
        for e in context(request).registry.entries(runner.name)
        if e.state is ModelState.READY
    ]
    return _json(config_json.model_metadata(runner, ready))


@router.get(MODEL + "/config", summary="The model's configuration in Triton's JSON form")
@router.get(VERSION + "/config", summary="One version's configuration in Triton's JSON form")
async def model_config(request: Request) -> Response:
    return _json(config_json.model_config(_runner(request)))


# -- inference --------------------------------------------------------------------------


@router.post(MODEL + "/infer", openapi_extra=_INFER_BODY, summary="Run the model")
@router.post(VERSION + "/infer", openapi_extra=_INFER_BODY, summary="Run one model version")
async def infer(request: Request) -> Response:
    ctx = context(request)
    limit = ctx.settings.max_body_bytes
    body = await read_body(request, limit)
    body = codec.decompress(body, request.headers.get("content-encoding"), limit)
    runner = _runner(request)
    header_length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
    parsed = codec.decode_request(body, header_length, runner.signature)
    results = await infer_while_connected(request, runner, parsed.arrays, parsed.timeout_s)
    content, json_length = codec.encode_response(
        runner.name, runner.version, parsed, results, runner.signature
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


# -- model repository -------------------------------------------------------------------


@router.post("/repository/index", summary="Every model in the repository and its state")
async def repository_index(request: Request) -> Response:
    ready_only = (await _json_body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput('"ready" must be true or false')
    registry = context(request).registry
    rows: list[dict[str, str]] = []
    for name in sorted(set(registry.names()) | set(registry.repository.names())):
        entries = registry.entries(name) if name in registry.names() else []
        if not entries and not ready_only:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
        for entry in entries:
            if not ready_only or entry.state is ModelState.READY:
                rows.append(
                    {
                        "name": name,
                        "version": str(entry.version) if entry.version > 0 else "",
                        "state": entry.state.value,
                        "reason": entry.reason,
                    }
                )
    return _json(rows)


@router.post("/repository/models/{name:path}/load", summary="Load or reload a model")
async def repository_load(request: Request) -> Response:
    name = request.path_params["name"]
    check_model_name(name)
    parameters = (await _json_body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise Unsupported(
            f"load parameter '{overrides[0]}' is not supported: models load from the "
            "repository folder only"
        )
    # A new version serves only once warm; the old one keeps serving meanwhile, then drains.
    await context(request).registry.load(name)
    return Response(status_code=200)


@router.post("/repository/models/{name:path}/unload", summary="Unload a model, draining it")
async def repository_unload(request: Request) -> Response:
    name = request.path_params["name"]
    check_model_name(name)
    await _json_body(request)  # `unload_dependents` has no meaning here: no ensembles
    registry = context(request).registry
    if name in registry.names():
        await registry.unload(name)  # refuses new requests at once, finishes accepted ones
    elif name not in registry.repository.names():
        raise ModelNotFound(f"unknown model '{name}'")
    # else: in the repository and not loaded, so already unloaded (Triton answers 200 too)
    return Response(status_code=200)
