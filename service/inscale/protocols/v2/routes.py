"""The Open Inference Protocol (KServe V2) over HTTP: the routes, in the protocol's order.

Each route reads the request, asks the core (the data plane and its registry) and encodes the
answer; the protocol's formats live in `codec`, `config_json` and `stats`, its statuses in
`errors` (every route here answers with that table). The infer routes are rows of the
data-plane route table (`DATA_ROUTES`), served by its drivers (`inscale.http.data_routes`).
"""

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from inscale import __version__, control
from inscale.errors import InvalidInput
from inscale.http import health
from inscale.http.body import read_body
from inscale.http.context import context
from inscale.http.data_routes import DataCall, DataRoute, Reply
from inscale.http.errors import error_route_class
from inscale.http.responses import json_response
from inscale.models.registry import ModelRegistry, ModelState
from inscale.models.repository import check_model_name, parse_version
from inscale.models.version import ModelVersion
from inscale.protocols.json_values import parse_object
from inscale.protocols.v2 import codec, config_json, stats
from inscale.protocols.v2.errors import V2_STATUS

TAG = "Open Inference Protocol (V2)"
router = APIRouter(prefix="/v2", tags=[TAG], route_class=error_route_class(V2_STATUS))

MODEL = "/models/{name}"
VERSION = "/models/{name}/versions/{version}"
_BINARY = b"application/octet-stream"
_HEADER_LENGTH = codec.HEADER_LENGTH.encode()

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


def _version(request: Request) -> int | None:
    return parse_version(request.path_params.get("version"))


def _model(request: Request) -> ModelVersion:
    return context(request).plane.model(request.path_params["name"], _version(request))


async def _json_body(request: Request) -> dict[str, Any]:
    """An optional JSON object body: empty, `{}`, or carrying `parameters`."""
    body = await read_body(request, context(request).settings.max_body_bytes)
    return parse_object(body, "the body") if body.strip() else {}


# -- server -----------------------------------------------------------------------------


@router.get("", summary="Server metadata and the protocol extensions it implements")
async def server_metadata() -> Response:
    return json_response(
        {"name": "inscale", "version": __version__, "extensions": list(config_json.EXTENSIONS)}
    )


router.add_api_route("/health/live", health.live, methods=["GET"], summary=health.live.__doc__)
router.add_api_route("/health/ready", health.ready, methods=["GET"], summary=health.ready.__doc__)


# -- models (stats first: `/models/stats` must not be read as a model named "stats") -------


@router.get("/models/stats", summary="Statistics of every loaded model version")
@router.get(MODEL + "/stats", summary="Statistics of a model's loaded versions")
@router.get(VERSION + "/stats", summary="Statistics of one model version")
async def model_statistics(request: Request) -> Response:
    registry = context(request).plane.registry
    name = request.path_params.get("name")
    if name is None:
        models = [m for n in registry.names() for m in _loaded(registry, n)]
    elif _version(request) is not None:
        models = [_model(request)]
    else:
        models = _loaded(registry, name)
    return json_response({"model_stats": [stats.model_stats(m) for m in models]})


def _loaded(registry: ModelRegistry, name: str) -> list[ModelVersion]:
    return [e.model for e in registry.entries(name) if e.model is not None]


@router.get(MODEL + "/ready", summary="The model's newest version can serve")
@router.get(VERSION + "/ready", summary="This model version can serve")
async def model_ready(request: Request) -> Response:
    model = _model(request)  # 404 if unknown, 503 if not ready
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


@router.get(MODEL, summary="Model metadata: versions, platform, inputs and outputs")
@router.get(VERSION, summary="Model metadata of one version")
async def model_metadata(request: Request) -> Response:
    model = _model(request)
    ready = [
        e.version
        for e in context(request).plane.registry.entries(model.name)
        if e.state is ModelState.READY
    ]
    return json_response(config_json.model_metadata(model, ready))


@router.get(MODEL + "/config", summary="The model's configuration in Triton's JSON form")
@router.get(VERSION + "/config", summary="One version's configuration in Triton's JSON form")
async def model_config(request: Request) -> Response:
    return json_response(config_json.model_config(_model(request)))


# -- inference --------------------------------------------------------------------------


async def infer(call: DataCall) -> Reply:
    plane = call.state.plane
    params = call.params
    model = plane.model(params["name"], parse_version(params.get("version")))
    header_length = codec.parse_header_length(call.header(_HEADER_LENGTH))
    body = call.body
    parsed = plane.decode(model, lambda rules: codec.decode_request(body, header_length, rules))
    results = await plane.infer(
        model,
        parsed.arrays,
        started=call.started,
        timeout_s=parsed.timeout_s,
        priority=parsed.priority,
        abandon_on=call.gone,
    )
    content, json_length = codec.encode_response(
        model.name, model.version, parsed, results, model.signature
    )
    if json_length is None:
        return Reply(200, content)
    return Reply(200, content, _BINARY, ((_HEADER_LENGTH, b"%d" % json_length),))


DATA_ROUTES = (
    DataRoute("POST", "/v2" + MODEL + "/infer", infer, V2_STATUS, "Run the model", _INFER_BODY),
    DataRoute(
        "POST", "/v2" + VERSION + "/infer", infer, V2_STATUS, "Run one model version", _INFER_BODY
    ),
)


# -- model repository -------------------------------------------------------------------


@router.post("/repository/index", summary="Every model in the repository and its state")
async def repository_index(request: Request) -> Response:
    ready_only = (await _json_body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput('"ready" must be true or false')
    rows = control.repository_index(context(request).plane.registry, ready_only)
    return json_response([dataclasses.asdict(row) for row in rows])


@router.post("/repository/models/{name:path}/load", summary="Load or reload a model")
async def repository_load(request: Request) -> Response:
    context(request).control.check(request.headers.get("authorization"))
    name = request.path_params["name"]
    check_model_name(name)  # before the body: a bad name is the first thing to say
    parameters = (await _json_body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    await control.load(context(request).plane.registry, name, parameters)
    return Response(status_code=200)


@router.post("/repository/models/{name:path}/unload", summary="Unload a model, draining it")
async def repository_unload(request: Request) -> Response:
    context(request).control.check(request.headers.get("authorization"))
    name = request.path_params["name"]
    check_model_name(name)
    await _json_body(request)  # `unload_dependents` has no meaning here: no ensembles
    await control.unload(context(request).plane.registry, name)
    return Response(status_code=200)
