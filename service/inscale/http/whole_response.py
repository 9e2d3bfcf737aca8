"""A complete, fixed-length HTTP response written in one transport write.

uvicorn writes a response in two writes (its head, then its body), two system calls, after
checking every header against two regexes and passing each ASGI message through every
middleware's `send`. For the data plane's answers, whose headers inscale builds itself, that
was the largest single cost on the event loop (issue 12's profile: about a fifth of its time on
Identity). Two writers use `response_bytes`: the direct path (`inscale.http.direct_path`), and
`write_whole`, which `GuardedHttpToolsProtocol` offers an ASGI request in its scope
(`inscale.http.scope_keys.WRITE_KEY`) for the ASGI data path (`inscale.http.fast_path`), which
falls back to ASGI messages when it is absent (another server) or declines.

`write_whole` declines, leaving the answer to uvicorn's `send`, whenever uvicorn would do more
than write: the client is not reading (uvicorn waits for its buffer to drain), access logging
is on (uvicorn logs the line), or a response has already begun.
"""

from collections.abc import Sequence

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

_CLOSE = (b"connection", b"close")
# uvicorn's default headers (the date) as bytes, for the list object it holds now: it makes a
# new list once a second, so this is rebuilt then, not for every response.
_defaults: tuple[object, bytes] = (None, b"")


def _default_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _defaults
    held, head = _defaults
    if held is not headers:
        head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
        _defaults = (headers, head)
    return head


def response_bytes(
    status: int,
    default_headers: list[tuple[bytes, bytes]],
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes | memoryview,
    close: bool,
) -> bytes:
    """The whole response: `headers` must be valid (made by inscale, Content-Length among
    them) and name no `Connection`; `close` adds `Connection: close`."""
    parts: list[bytes | memoryview] = [STATUS_LINE[status], _default_head(default_headers)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


def write_whole(
    cycle: RequestResponseCycle,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes | memoryview,
) -> bool:
    """Write the response for `cycle`'s request and complete it as uvicorn's `send` would.

    `headers` as for `response_bytes`. Returns False, having done nothing, where uvicorn's
    `send` must be used.
    """
    if cycle.disconnected:
        return True  # as uvicorn's `send`: nobody to answer, the app carries on
    if cycle.response_started or cycle.flow.write_paused or cycle.access_log:
        return False
    # The request's own `Connection: close`, HTTP/1.0, or a server draining: the last answer.
    if not cycle.keep_alive or _CLOSE in cycle.scope["headers"]:
        cycle.keep_alive = False
    cycle.response_started = True
    cycle.transport.write(
        response_bytes(status, cycle.default_headers, headers, body, not cycle.keep_alive)
    )
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True
