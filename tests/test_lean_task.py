"""`LeanTask`, the direct path's stand-in for an asyncio Task, on asyncio's loop and uvloop.

Each test drives a real coroutine through real futures and checks what an asyncio Task would
do in its place: the result or error, cancellation at each point it can arrive, the context
every step runs in, and when the done-callback runs.
"""

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import pytest
import uvloop

from inscale.http.lean_task import LeanTask

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def run(test: Callable[[], Awaitable[None]], loop_kind: str) -> None:
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(test())  # type: ignore[arg-type]


LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


class Ended:
    """The done-callback: records each call, and its place in `order` if given one."""

    def __init__(self, order: list[str] | None = None) -> None:
        self.calls: list[LeanTask[Any]] = []
        self.order = order
        self.event = asyncio.Event()

    def __call__(self, task: LeanTask[Any]) -> None:
        self.calls.append(task)
        if self.order is not None:
            self.order.append("done-callback")
        self.event.set()


def started(
    coro: Coroutine[Any, Any, Any], who: str = "request", order: list[str] | None = None
) -> tuple[LeanTask[Any], Ended]:
    ended = Ended(order)
    context = contextvars.copy_context()
    context.run(WHO.set, who)
    task = LeanTask(coro, asyncio.get_running_loop(), context, ended)
    task.start()
    return task, ended


@LOOPS
def test_a_result_arrives_through_the_futures_it_awaits(loop_kind: str) -> None:
    async def test() -> None:
        first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def endpoint() -> int:
            seen.append(WHO.get())
            value = await first
            seen.append(WHO.get())
            await asyncio.sleep(0)  # a bare yield
            await asyncio.sleep(0.001)  # a timer's future
            seen.append(WHO.get())
            return value * 2

        task, ended = started(endpoint())
        await asyncio.sleep(0)  # the first step runs from a loop callback
        assert seen == ["request"]
        assert not task.done() and WHO.get() == "nobody"  # the caller's context is untouched
        first.set_result(21)
        await asyncio.wait_for(ended.event.wait(), 5)
        assert task.result() == 42 and task.exception() is None and not task.cancelled()
        assert seen == ["request"] * 3
        assert ended.calls == [task]
        assert not task.cancel()  # done: nothing to cancel

    run(test, loop_kind)


@LOOPS
def test_an_error_is_kept_and_raised_by_result(loop_kind: str) -> None:
    async def test() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def endpoint() -> None:
            await gate
            raise ValueError("bad input")

        task, ended = started(endpoint())
        gate.set_result(None)
        await asyncio.wait_for(ended.event.wait(), 5)
        assert isinstance(task.exception(), ValueError) and not task.cancelled()
        with pytest.raises(ValueError, match="bad input"):
            task.result()

    run(test, loop_kind)


class Held:
    """Something large a failing request's frames hold (its body, its arrays)."""


@LOOPS
def test_a_failed_request_is_freed_without_the_cyclic_collector(loop_kind: str) -> None:
    async def test() -> None:
        held: list[weakref.ref[Held]] = []

        async def endpoint() -> None:
            body = Held()
            held.append(weakref.ref(body))
            await asyncio.sleep(0)
            raise ValueError("bad input")

        task, ended = started(endpoint())
        await asyncio.wait_for(ended.event.wait(), 5)
        error = task.exception()
        assert isinstance(error, ValueError)
        frames = []
        traceback = error.__traceback__
        while traceback is not None:
            frames.append(traceback.tb_frame.f_code.co_name)
            traceback = traceback.tb_next
        assert frames == ["endpoint"]  # where a Task's traceback starts
        ended.calls.clear()  # the test's own cycle: the task holds `ended` as its callback
        del task, ended, error, traceback
        assert held[0]() is None  # freed by reference counting alone

    gc.disable()
    try:
        run(test, loop_kind)
    finally:
        gc.enable()


@LOOPS
def test_the_first_step_and_the_done_callback_each_run_from_a_loop_callback(
    loop_kind: str,
) -> None:
    # A Task's schedule, which the direct path keeps: answering in the step that ended the
    # request, or stepping inside the protocol's read, cost a quarter more CPU per request.
    async def test() -> None:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        async def endpoint() -> str:
            order.append("first step")
            loop.call_soon(order.append, "scheduled by the last step")
            return WHO.get()

        task, ended = started(endpoint(), who="early", order=order)
        order.append("start returned")
        await asyncio.wait_for(ended.event.wait(), 5)
        assert order == [
            "start returned",
            "first step",
            "scheduled by the last step",
            "done-callback",
        ]
        assert task.result() == "early"

    run(test, loop_kind)


@LOOPS
def test_cancel_before_the_first_step_cancels_without_running_it(loop_kind: str) -> None:
    async def test() -> None:
        ran: list[bool] = []

        async def endpoint() -> None:
            ran.append(True)

        task, ended = started(endpoint())
        assert task.cancel()
        await asyncio.wait_for(ended.event.wait(), 5)
        assert task.cancelled() and ran == []

    run(test, loop_kind)


@LOOPS
def test_cancel_while_waiting_cancels_the_awaited_future(loop_kind: str) -> None:
    async def test() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def endpoint() -> int:
            return await answer

        task, ended = started(endpoint())
        await asyncio.sleep(0)  # its first step: now it awaits the future
        assert task.cancel(msg="shutting down")
        assert answer.cancelled()  # as Task.cancel does: the future it awaits is cancelled
        await asyncio.wait_for(ended.event.wait(), 5)
        assert task.cancelled() and ended.calls == [task]

    run(test, loop_kind)


@LOOPS
def test_a_coroutine_may_catch_its_cancellation_and_answer(loop_kind: str) -> None:
    async def test() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def endpoint() -> str:
            try:
                await answer
            except asyncio.CancelledError:
                return "answered anyway"
            return "not cancelled"

        task, ended = started(endpoint())
        await asyncio.sleep(0)  # its first step: now it awaits the future
        task.cancel()
        await asyncio.wait_for(ended.event.wait(), 5)
        assert not task.cancelled() and task.result() == "answered anyway"

    run(test, loop_kind)


@LOOPS
def test_cancel_after_the_future_completed_is_thrown_in_at_the_next_step(
    loop_kind: str,
) -> None:
    async def test() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        steps: list[str] = []

        async def endpoint() -> int:
            value = await answer
            steps.append("resumed normally")  # must not happen: the cancel came first
            return value

        task, ended = started(endpoint())
        await asyncio.sleep(0)  # its first step: now it awaits the future
        answer.set_result(1)  # its done-callback (our resumption) is now only scheduled
        assert task.cancel()
        await asyncio.wait_for(ended.event.wait(), 5)
        assert task.cancelled() and steps == []

    run(test, loop_kind)


class _NotAFuture:
    def __await__(self) -> Generator[Any, None, None]:
        yield "not a future"


@LOOPS
def test_awaiting_something_that_is_not_a_future_raises_inside_the_coroutine(
    loop_kind: str,
) -> None:
    async def test() -> None:
        async def endpoint() -> None:
            await _NotAFuture()

        task, ended = started(endpoint())
        await asyncio.wait_for(ended.event.wait(), 5)
        error = task.exception()
        assert isinstance(error, RuntimeError) and "not a future" in str(error)

    run(test, loop_kind)
