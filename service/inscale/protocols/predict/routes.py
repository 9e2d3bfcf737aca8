"""`POST /predict`: the simple JSON endpoint. Decode -> data plane -> encode (the body is read
by the driver: `inscale.http.data_routes`)."""

from inscale.http.data_routes import DataCall, DataRoute, Reply
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


async def predict(call: DataCall) -> Reply:
    plane = call.state.plane
    parsed = codec.parse_request(call.body)
    model = plane.model(parsed.model, parsed.version)
    arrays = plane.decode(model, lambda rules: codec.to_arrays(parsed.inputs, rules))
    outputs = await plane.infer(
        model,
        arrays,
        started=call.started,
        timeout_s=parsed.timeout_s,
        priority=parsed.priority,
        abandon_on=call.gone,
    )
    return Reply(200, codec.encode_response(model.name, model.version, outputs))


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
