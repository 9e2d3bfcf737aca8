"""JSON responses, encoded once with orjson (numpy arrays included)."""

from starlette.responses import Response

from inscale.protocols.json_values import dumps


def json_response(document: object, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")
