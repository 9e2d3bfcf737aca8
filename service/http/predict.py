"""`POST /predict`: the simple JSON endpoint. HTTP -> decode -> runner -> encode."""

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import predict_codec
from service.http.body import parse_json, read_body, watch_disconnect
from service.http.context import context
from service.http.errors import error_response

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
    gone = watch_disconnect(request)
    try:
        outputs = await runner.infer(arrays, parsed.timeout_s, abandon_on=gone)
    except asyncio.CancelledError:
        if not gone.done():
            raise  # the server is cancelling us, not the client leaving
        # Nobody reads this; 499 (nginx's "client closed request") keeps access logs honest.
        return error_response(499, "client closed the request")
    finally:
        gone.cancel()
    return Response(
        predict_codec.encode_response(runner.name, runner.version, outputs),
        media_type="application/json",
    )
