"""`POST /predict`: the simple JSON endpoint. Read -> decode -> data plane -> encode."""

import time

from starlette.requests import Request
from starlette.responses import Response

from inscale.http.body import read_body
from inscale.http.context import context
from inscale.http.data_routes import DataRoute
from inscale.http.disconnect import infer_while_connected
from inscale.protocols.predict import codec
from inscale.protocols.predict.errors import PREDICT_STATUS

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {"model": "digits", "inputs": [[0.0] * 64]},
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "integer"},
                        "timeout_ms": {"type": "number"},
                        "inputs": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                    },
                },
            }
        },
    }
}


async def predict(request: Request) -> Response:
    started = time.perf_counter()
    ctx = context(request)
    plane = ctx.plane
    parsed = codec.parse_request(await read_body(request, ctx.settings.max_body_bytes))
    model = plane.model(parsed.model, parsed.version)
    arrays = plane.decode(model, lambda rules: codec.to_arrays(parsed.inputs, rules))
    outputs = await infer_while_connected(
        request,
        plane,
        model,
        arrays,
        started=started,
        timeout_s=parsed.timeout_s,
        priority=parsed.priority,
    )
    return Response(
        codec.encode_response(model.name, model.version, outputs), media_type="application/json"
    )


DATA_ROUTES = (
    DataRoute(
        "POST",
        "/predict",
        predict,
        PREDICT_STATUS,
        "Run a model on one or more rows",
        _OPENAPI_BODY,
    ),
)
