"""Reading a request body within the configured size limit."""

from starlette.requests import ClientDisconnect, Request

from inscale.errors import InvalidInput, PayloadTooLarge
from inscale.http.errors import ClientGone


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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left mid-body, or the body timeout cut it: not a server failure.
        raise ClientGone from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
