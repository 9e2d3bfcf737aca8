"""`POST /predict`: the simple JSON endpoint. HTTP -> decode -> runner -> encode."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from inscale.http.body import infer_while_connected, parse_json, read_body
from inscale.http.context import context
from inscale.protocols.predict import codec as predict_codec

router = APIRouter()

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


@router.post("/predict", openapi_extra=_OPENAPI_BODY, summary="Run a model on one or more rows")
async def predict(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, ctx.settings.max_body_bytes)
    parsed = predict_codec.parse_request(parse_json(body))
    runner = ctx.registry.get(ctx.model_name(parsed.model), parsed.version)
    arrays = predict_codec.to_arrays(parsed.inputs, runner.signature)
    outputs = await infer_while_connected(request, runner, arrays, parsed.timeout_s)
    return Response(
        predict_codec.encode_response(runner.name, runner.version, outputs),
        media_type="application/json",
    )
