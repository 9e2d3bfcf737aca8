"""Reading request bodies within the configured size limit, and watching for disconnects."""

import asyncio
from typing import Any

import orjson
from fastapi import Request

from inscale.batch_arrays import Arrays
from inscale.errors import InvalidInput, PayloadTooLarge
from inscale.http.errors import ClientGone
from inscale.models.version import ModelRunner


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is refused as soon as it crosses the limit, so memory per request stays bounded.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> object:
    if not body:
        raise InvalidInput("the request body is empty; a JSON object is expected")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc


async def infer_while_connected(
    request: Request, runner: ModelRunner, arrays: Arrays, timeout_s: float | None
) -> Arrays:
    """Run a request, dropping it from the queue if its client disconnects meanwhile.

    Only valid once the body has been read: the next ASGI message is then the disconnect.
    """
    gone: asyncio.Future[Any] = asyncio.ensure_future(request.receive())
    try:
        return await runner.infer(arrays, timeout_s, abandon_on=gone)
    except asyncio.CancelledError:
        if not gone.done():
            raise  # the server is cancelling us, not the client leaving
        raise ClientGone from None
    finally:
        gone.cancel()
