"""Running a request through the data plane while watching its HTTP client for a disconnect."""

import asyncio
from typing import Any

from starlette.requests import Request

from inscale.batch_arrays import Arrays
from inscale.dataplane import DataPlane
from inscale.http.errors import ClientGone
from inscale.http.scope_keys import GONE_KEY
from inscale.models.version import ModelVersion


async def infer_while_connected(
    request: Request,
    plane: DataPlane,
    model: ModelVersion,
    arrays: Arrays,
    *,
    started: float,
    timeout_s: float | None,
    priority: int = 0,
) -> Arrays:
    """Run a request, dropping it from the queue if its client disconnects meanwhile.

    Only valid once the body has been read. Under `inscale serve` the connection's own
    "gone" future is watched; under another ASGI server, a task waiting for the next ASGI
    message (the disconnect, once the body is read).
    """
    shared: asyncio.Future[Any] | None = request.scope.get(GONE_KEY)
    gone = shared if shared is not None else asyncio.ensure_future(request.receive())
    try:
        return await plane.infer(
            model,
            arrays,
            started=started,
            timeout_s=timeout_s,
            priority=priority,
            abandon_on=gone,
        )
    except asyncio.CancelledError:
        if not gone.done():
            raise  # the server is cancelling us, not the client leaving
        raise ClientGone from None
    finally:
        if shared is None:
            gone.cancel()
