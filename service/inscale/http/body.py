"""Reading a request body within the configured size limit, and undoing its
`Content-Encoding` (gzip or deflate) within the same limit, for every HTTP route."""

import zlib

from starlette.requests import ClientDisconnect, Request

from inscale.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding, quoted
from inscale.http.errors import ClientGone


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, inflated, refusing it as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is refused as soon as it crosses the limit, and a compressed one as soon as it inflates
    past it, so memory per request stays bounded.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
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
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return inflate(body, request.headers.get("content-encoding"), limit)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate`, never inflating past `limit` bytes."""
    kind = (encoding or "").strip().lower()
    if kind in ("", "identity"):
        return body
    if kind not in ("gzip", "deflate"):
        raise UnsupportedEncoding(
            f"Content-Encoding {quoted(encoding or '')} is not supported (gzip or deflate)"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {kind} data: {exc}") from exc
    if len(inflated) > limit:
        raise PayloadTooLarge(f"the {kind} body inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"the {kind} body is truncated")
    return inflated
