"""Running a request through the data plane while watching its HTTP client for a disconnect."""

import asyncio
from typing import Any

from starlette.requests import Request

from inscale.batch_arrays import Arrays
from inscale.dataplane import DataPlane
from inscale.http.errors import ClientGone
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

    Only valid once the body has been read: the next ASGI message is then the disconnect.
    """
    gone: asyncio.Future[Any] = asyncio.ensure_future(request.receive())
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
        gone.cancel()
