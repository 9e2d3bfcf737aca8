"""What one server process allows its HTTP connections, and what they did: the limits the
connection protocol (`inscale.http.guarded_protocol`) enforces and the counts it keeps.

uvicorn has no header or body read timeout, and its `limit_concurrency` answers a plain-text
503 only once a request's headers arrive (so a client that never finishes them is never
refused), so the protocol enforces these limits itself. The app factory builds one guard per
process and hands it to the protocol through the ASGI lifespan state (`STATE_KEY`): no
globals, and `--workers N` gets one per worker.

Responses written here, below the ASGI app, have the same JSON shape as every other error
(`{"error": "..."}`), encoded once when the guard is built, so refusing costs no encoding.
"""

from dataclasses import dataclass, field

import orjson
from starlette.types import Receive, Scope, Send

from inscale.settings import ServerSettings

STATE_KEY = "inscale.connection_guard"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_requests_in_flight: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "ConnectionLimits":
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
            max_requests_in_flight=settings.max_requests_in_flight,
            retry_after_s=settings.retry_after_s,
        )

    @property
    def hard_connection_ceiling(self) -> int:
        """Past this many open connections a new one is closed at once, unanswered.

        Between the cap and this ceiling a connection may still send its request and read a
        503; past it even that would let file descriptors grow with the client's accept rate.
        """
        return 2 * self.max_connections


@dataclass(slots=True)
class HttpCounts:
    """Counts kept by every connection of one process; read for the shutdown log line.

    `read` counts requests whose headers were complete (the app was started for them),
    `answered` those whose whole response was written, including the 408s and 503s the
    protocol writes itself. What the server read but never answered is `read - answered`:
    requests whose client left first, or that the grace period cut.
    """

    read: int = 0
    answered: int = 0
    draining: bool = False
    drained: int = 0  # answered while draining, each with `Connection: close`
    closed_idle: int = 0  # connections that ended during the drain with no request
    header_timeouts: int = 0
    body_timeouts: int = 0
    refused_connections: int = 0  # past the connection cap (answered 503 or closed at once)
    refused_requests: int = 0  # past the in-flight cap (answered 503)

    def shutdown_summary(self) -> tuple[str, dict[str, int]]:
        """The shutdown log line and its figures (JSON logs carry them as fields)."""
        unanswered = self.read - self.answered
        figures = {
            "drained": self.drained,
            "closed_idle": self.closed_idle,
            "requests_read": self.read,
            "requests_answered": self.answered,
            "requests_unanswered": unanswered,
        }
        line = (
            f"HTTP drained: {self.drained} requests answered while draining (with Connection: "
            f"close), {self.closed_idle} idle connections closed; since start "
            f"{self.read} requests read, {self.answered} answered"
        )
        if unanswered:
            line += f", {unanswered} not answered (the client left first, or the grace ran out)"
        return line, figures


def raw_response(body: bytes, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole 408 with a JSON body and `Connection: close`, to write straight to a transport
    (uvicorn's `default_headers` carry the Date header)."""
    lines = [
        b"HTTP/1.1 408 Request Timeout",
        *(name + b": " + value for name, value in default_headers),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Refusal:
    """An ASGI app that answers one prepared 503, run by uvicorn in place of the real app so
    the response goes through uvicorn's own response writing (keep-alive, pipelining)."""

    def __init__(self, message: str, retry_after_s: int, *, close: bool) -> None:
        self.body = orjson.dumps({"error": message})
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
        ]
        if close:
            self.headers.append((b"connection", b"close"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(slots=True)
class ConnectionGuard:
    """The limits, the counts, and the prepared refusals of one process."""

    limits: ConnectionLimits
    header_timeout_body: bytes
    body_timeout_body: bytes
    too_many_connections: Refusal
    too_many_in_flight: Refusal
    counts: HttpCounts = field(default_factory=HttpCounts)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "ConnectionGuard":
        limits = ConnectionLimits.from_settings(settings)
        return cls(
            limits=limits,
            header_timeout_body=orjson.dumps(
                {
                    "error": f"the request headers did not arrive within "
                    f"{limits.header_timeout_s:g} s (--header-timeout-s)"
                }
            ),
            body_timeout_body=orjson.dumps(
                {
                    "error": f"the request body did not arrive within "
                    f"{limits.body_timeout_s:g} s (--body-timeout-s)"
                }
            ),
            too_many_connections=Refusal(
                f"the server has {limits.max_connections} connections open, its limit "
                "(--max-connections); retry later",
                limits.retry_after_s,
                close=True,
            ),
            too_many_in_flight=Refusal(
                f"the server has {limits.max_requests_in_flight} requests in flight, its "
                "limit (--max-requests-in-flight); retry later",
                limits.retry_after_s,
                close=False,
            ),
        )
