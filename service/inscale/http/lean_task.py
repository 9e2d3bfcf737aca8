"""A request's coroutine run on the event loop as an asyncio Task would run it, for less.

Every request on the direct path was one `asyncio.Task`. On CPython 3.11 a Task costs more than
its object: asyncio's `WeakSet` of all tasks gains an entry and loses it again, in Python code
with a weak reference each way. A request's endpoint needs no Task: it awaits asyncio futures
(the batcher's answer), and nothing in it asks for `asyncio.current_task()` (which
`asyncio.timeout`, anyio and sniffio need; with none, they would fail every request, loudly).

`LeanTask` keeps a Task's schedule exactly: its first step and its done-callback each run from
a loop callback of their own, and each resumption from the done-callback of the future it
awaits, every step in the request's context (its request id). The schedule matters more than
the saving: taking the first step inside the protocol's read, or writing the reply from the
step that ended the coroutine, made requests cost 25-33% more CPU on Identity at 32
connections (bench_ab, against Task), since the server then answers in smaller bursts and
turns its loop more often per request. `cancel()` does what `Task.cancel()` does: it cancels
the future being awaited, or throws `CancelledError` in at the next step.
"""

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LeanTask(Generic[T]):
    __slots__ = (
        "_cancelled",
        "_context",
        "_coro",
        "_done",
        "_exception",
        "_loop",
        "_must_cancel",
        "_on_done",
        "_result",
        "_waiting",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
        on_done: "Callable[[LeanTask[T]], None]",
    ) -> None:
        self._coro: Coroutine[Any, Any, T] | None = coro
        self._loop = loop
        self._context = context
        self._on_done = on_done
        self._waiting: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self._done = False
        self._cancelled = False
        self._result: T | None = None
        self._exception: BaseException | None = None

    def start(self) -> None:
        """Take the first step soon, from a loop callback (as `loop.create_task` does)."""
        self._loop.call_soon(self._step, context=self._context)

    # -- what `asyncio.Task` offers that the direct path and uvicorn's shutdown use ---------

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        """Its error; None if it returned (call only once done and not cancelled)."""
        return self._exception

    def result(self) -> T:
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]  # set whenever it returned

    def cancel(self, msg: str | None = None) -> bool:
        if self._done:
            return False
        waiting = self._waiting
        if waiting is not None and waiting.cancel(msg=msg):
            return True  # its done-callback resumes the coroutine, whose `await` then raises
        self._must_cancel = True  # mid-step, or the future already done: thrown in next
        return True

    # -- stepping -----------------------------------------------------------------------

    def _wakeup(self, _: "asyncio.Future[Any]") -> None:
        self._waiting = None
        self._step()

    def _step(self, error: BaseException | None = None) -> None:
        coro = self._coro
        assert coro is not None, "a finished LeanTask was stepped"
        if self._must_cancel:
            self._must_cancel = False
            error = asyncio.CancelledError()
        # In the request's context: every callback here is scheduled in it.
        try:
            yielded = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            self._end(stop.value, None, cancelled=False)
        except asyncio.CancelledError:
            self._end(None, None, cancelled=True)
        except BaseException as exc:  # the caller's to judge, as a Task's would be
            # Its traceback starts at this frame, whose `self` is the task holding it: a
            # cycle that only the cyclic collector frees, with the request's body and arrays
            # in the frames (a test of bad requests saw RSS grow 300 MB). Without this frame
            # the traceback starts where a Task's does, at the coroutine.
            if exc.__traceback__ is not None:  # its first entry is this frame
                exc.__traceback__ = exc.__traceback__.tb_next
            self._end(None, exc, cancelled=False)
        else:
            self._wait(yielded)

    def _wait(self, yielded: object) -> None:
        if getattr(yielded, "_asyncio_future_blocking", False):  # `await` on a future
            future: asyncio.Future[Any] = yielded  # type: ignore[assignment]
            future._asyncio_future_blocking = False  # the protocol Task follows with it
            self._waiting = future
            future.add_done_callback(self._wakeup, context=self._context)
            if self._must_cancel and future.cancel():
                self._must_cancel = False  # cancelled mid-step: the future's cancel stands
        elif yielded is None:  # a bare `yield` (`asyncio.sleep(0)`): step again soon
            self._loop.call_soon(self._step, context=self._context)
        else:
            # What a Task does with it: the coroutine hears of its mistake at the next step.
            error = RuntimeError(f"awaited {yielded!r}, not a future")
            self._loop.call_soon(self._step, error, context=self._context)

    def _end(self, result: T | None, error: BaseException | None, *, cancelled: bool) -> None:
        self._done = True
        self._coro = None
        self._result = result
        self._exception = error
        self._cancelled = cancelled
        self._loop.call_soon(self._on_done, self, context=self._context)
