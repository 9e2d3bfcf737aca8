"""Reading a request body within the configured size limit, and undoing its
`Content-Encoding` (gzip or deflate) within the same limit, for every HTTP route."""

import zlib
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import Receive

from inscale.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding, quoted
from inscale.http.errors import ClientGone


async def read_body(request: Request, limit: int) -> bytes:
    """`receive_body` for a Starlette request."""
    return await receive_body(request.scope["headers"], request.receive, limit)


def plain_length(headers: Sequence[tuple[bytes, bytes]], limit: int) -> int | None:
    """The declared length of a body that needs none of `receive_body`'s checks on the way
    in: a valid Content-Length within `limit`, no Content-Encoding, no Transfer-Encoding.
    None for any other body, which `receive_body` then reads (and names what is wrong)."""
    declared = None
    for name, value in headers:
        if name == b"content-length":
            declared = value
        elif name in (b"content-encoding", b"transfer-encoding"):
            return None
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return None
    length = int(declared)
    return length if length <= limit else None


async def receive_body(
    headers: Sequence[tuple[bytes, bytes]], receive: Receive, limit: int
) -> bytes:
    """The whole body, inflated, refusing it as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is refused as soon as it crosses the limit, and a compressed one as soon as it inflates
    past it, so memory per request stays bounded.
    """
    declared = encoding = None
    for name, value in headers:  # one pass, no header object per request
        if name == b"content-length":
            declared = value
        elif name == b"content-encoding":
            encoding = value.decode("latin-1")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidInput("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared.decode()} bytes exceeds the limit of {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    while True:  # the ASGI messages themselves: Starlette's stream() is a generator around them
        message = await receive()
        if message["type"] != "http.request":
            # The client left mid-body, or the body timeout cut it: not a server failure.
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return inflate(body, encoding, limit)


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
