"""The data plane: the one core that every protocol (`/predict`, V2 HTTP, gRPC) calls.

A protocol decodes its wire format and hands over arrays; the data plane resolves the model
version, checks the arrays, submits them to the version's batcher with a deadline, records
how the request ended in the version's event stream, and returns the outputs for the protocol
to encode. It raises only the core's errors (`inscale.errors`) and knows nothing of HTTP or
gRPC; each protocol maps those errors to its own statuses in its own table.
"""

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

from inscale.batch_arrays import Arrays
from inscale.batcher import (
    BatcherClosedError,
    BatchFailedError,
    DeadlineError,
    LateError,
    OverloadedError,
    QueueFullError,
)
from inscale.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    QueueFull,
)
from inscale.models.registry import ModelRegistry
from inscale.models.version import ModelVersion, Request
from inscale.validation import InputRules, count_rows

D = TypeVar("D")

# The share of a latency objective the batcher may plan with: the rest is for what the
# server cannot see or schedule (a request waiting in its socket before it is read, the
# answer waiting to be written), which under load is where the tail goes.
SLO_SHARE = 0.8


class DataPlane:
    def __init__(
        self, registry: ModelRegistry, *, default_model: str | None, retry_after_s: int
    ) -> None:
        """`default_model`: the model meant by a request that names none (see `model`)."""
        self.registry = registry
        self._default_model = default_model
        self._retry_after_s = retry_after_s

    def model(self, name: str | None, version: int | None = None) -> ModelVersion:
        """The version a request means: the model it names, else the configured default, else
        the only one served; the newest ready version unless it names one."""
        return self.registry.get(self._model_name(name), version)

    def _model_name(self, requested: str | None) -> str:
        if requested is not None:
            return requested
        if self._default_model is not None:
            return self._default_model
        names = self.registry.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ModelNotFound("no model is loaded")
        raise InvalidInput(f'several models are served ({", ".join(names)}); name one in "model"')

    def decode(self, model: ModelVersion, decoder: Callable[[InputRules], D]) -> D:
        """Run a protocol's decoder against the model's input rules; bad input is counted
        for the model here, whichever protocol found it."""
        try:
            return decoder(model.rules)
        except InvalidInput:
            model.events.request_refused()
            raise

    async def infer(
        self,
        model: ModelVersion,
        arrays: Arrays,
        *,
        started: float,
        timeout_s: float | None = None,
        priority: int = 0,
        abandon_on: "asyncio.Future[Any] | None" = None,
    ) -> Arrays:
        """Run one request (one or more rows) and return its outputs.

        `started` is `time.perf_counter()` when the request arrived at its protocol layer.
        The deadline is the model's `timeout_ms`, or `timeout_s` if that is sooner (and the
        model's latency objective, if sooner still, in the batcher). `priority` is the
        request's parameter: 0 for the model's default level, else 1 (highest) to its
        `priority_levels`. A request with more rows than a run takes is split into runs and
        reassembled. When `abandon_on` completes (the caller went away) the request leaves
        the queue and this raises `CancelledError`.
        """
        events = model.events
        try:
            rows = count_rows(model.rules, arrays)
            level = _level(model, priority)
        except InvalidInput:
            events.request_refused()
            raise
        timeout = model.timeout_s if timeout_s is None else min(timeout_s, model.timeout_s)
        slo_ms = model.config.latency_slo_ms
        # Counted from the request's arrival, not from now: under load, reading and decoding
        # take a share of the time the deadline and the objective allow.
        arrived = model.batcher.time() - (time.perf_counter() - started)
        budget = timeout if slo_ms is None else min(timeout, slo_ms / 1000 * SLO_SHARE)
        deadline = arrived + budget
        key = model.key(arrays)
        succeeded = False
        try:
            if rows <= model.max_rows:
                result = await model.batcher.submit(
                    Request(arrays, rows),
                    rows=rows,
                    key=key,
                    deadline=deadline,
                    level=level,
                    abandon_on=abandon_on,
                )
            else:
                result = await _in_chunks(model, arrays, rows, key, deadline, level, abandon_on)
            succeeded = True
            return result
        except OverloadedError as exc:
            raise Overloaded(
                f"model '{model.name}' is overloaded: {exc}", self._retry_after_s
            ) from exc
        except QueueFullError as exc:
            raise QueueFull(
                f"model '{model.name}' is overloaded: {exc}", self._retry_after_s
            ) from exc
        except LateError as exc:
            raise DeadlineExceeded(
                f"model '{model.name}': request timed out: dropped before its run, which could "
                f"no longer end within {_deadline_text(model, timeout)}"
            ) from exc
        except DeadlineError as exc:
            raise DeadlineExceeded(
                f"model '{model.name}': request timed out after {_deadline_text(model, timeout)} "
                "in the queue"
            ) from exc
        except BatchFailedError as exc:
            raise ModelExecutionError(f"model '{model.name}' failed: {exc}") from exc
        except BatcherClosedError as exc:
            raise ModelNotReady(f"model '{model.name}' is shutting down") from exc
        finally:
            events.request_done(succeeded, time.perf_counter() - started)


def _level(model: ModelVersion, priority: int) -> int:
    batching = model.config.batching
    if priority > batching.priority_levels:
        raise InvalidInput(
            f'the "priority" parameter must be 0 (default) to {batching.priority_levels} '
            f"for model '{model.name}' (its priority_levels), got {priority}"
        )
    return batching.level_of(priority)


def _deadline_text(model: ModelVersion, timeout_s: float) -> str:
    slo_ms = model.config.latency_slo_ms
    if slo_ms is not None and slo_ms < timeout_s * 1000:
        return f"{slo_ms:g} ms (its latency objective)"
    return f"{timeout_s * 1000:g} ms"


async def _in_chunks(
    model: ModelVersion,
    arrays: Arrays,
    rows: int,
    key: Hashable,
    deadline: float,
    level: int,
    abandon_on: "asyncio.Future[Any] | None",
) -> Arrays:
    """A request with more rows than a run takes: submitted as chunks of at most
    `max_batch_size` rows, queued in order (so they run in order, possibly beside other
    callers' rows), and their outputs joined. The first chunk that fails fails the request
    with its error, and the chunks still queued leave the queue."""
    step = model.max_rows
    tasks = []
    for start in range(0, rows, step):
        chunk = {name: array[start : start + step] for name, array in arrays.items()}
        size = min(step, rows - start)
        submitted = model.batcher.submit(
            Request(chunk, size),
            rows=size,
            key=key,
            deadline=deadline,
            level=level,
            abandon_on=abandon_on,
        )
        tasks.append(asyncio.ensure_future(submitted))
    try:
        parts = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
