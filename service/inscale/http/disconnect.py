"""Running a request through the data plane while watching its HTTP client for a disconnect."""

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from inscale.batch_arrays import Arrays
from inscale.dataplane import DataPlane
from inscale.http.errors import ClientGone
from inscale.http.scope_keys import GONE_KEY
from inscale.models.version import ModelVersion


def infer_while_connected(
    request: Request,
    plane: DataPlane,
    model: ModelVersion,
    arrays: Arrays,
    *,
    started: float,
    timeout_s: float | None,
    priority: int = 0,
) -> Awaitable[Arrays]:
    """Run a request, dropping it from the queue if its client disconnects meanwhile.

    Only valid once the body has been read. Under `inscale serve` the data plane watches the
    connection's own "gone" future, and the request's task sees `CancelledError` if it
    completes: the data path turns that into `ClientGone` (`client_left`), so no coroutine
    of ours sits between the endpoint and the data plane. Under another ASGI server, a task
    waits for the next ASGI message (the disconnect, once the body is read).
    """
    gone: asyncio.Future[Any] | None = request.scope.get(GONE_KEY)
    if gone is not None:  # every request under `inscale serve`: the call itself, no wrapper
        return plane.infer(
            model, arrays, started=started, timeout_s=timeout_s, priority=priority, abandon_on=gone
        )
    infer = partial(
        plane.infer, model, arrays, started=started, timeout_s=timeout_s, priority=priority
    )
    return _watching_messages(request, infer)


def client_left(scope: Scope) -> bool:
    """Whether a `CancelledError` in this request's task means its client went away."""
    gone: asyncio.Future[Any] | None = scope.get(GONE_KEY)
    return gone is not None and gone.done()


async def _watching_messages(request: Request, infer: Callable[..., Awaitable[Arrays]]) -> Arrays:
    gone: asyncio.Future[Any] = asyncio.ensure_future(request.receive())
    try:
        return await infer(abandon_on=gone)
    except asyncio.CancelledError:
        if not gone.done():
            raise  # the server is cancelling us, not the client leaving
        raise ClientGone from None
    finally:
        gone.cancel()
