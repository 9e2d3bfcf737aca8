"""The data plane: the one core that every protocol (`/predict`, V2 HTTP, gRPC) calls.

A protocol decodes its wire format and hands over arrays; the data plane resolves the model
version, checks the arrays, submits them to the version's batcher with a deadline, records
how the request ended in the version's event stream, and returns the outputs for the protocol
to encode. It raises only the core's errors (`inscale.errors`) and knows nothing of HTTP or
gRPC; each protocol maps those errors to its own statuses in its own table.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from inscale.batch_arrays import Arrays
from inscale.batcher import BatcherClosedError, BatchFailedError, DeadlineError, QueueFullError
from inscale.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
)
from inscale.models.registry import ModelRegistry
from inscale.models.version import ModelVersion, Request
from inscale.validation import InputRules, count_rows

D = TypeVar("D")


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
        abandon_on: "asyncio.Future[Any] | None" = None,
    ) -> Arrays:
        """Run one request (one or more rows) and return its outputs.

        `started` is `time.perf_counter()` when the request arrived at its protocol layer.
        The deadline is the model's `timeout_ms`, or `timeout_s` if that is sooner. When
        `abandon_on` completes (the caller went away) the request leaves the queue and this
        raises `CancelledError`.
        """
        events = model.events
        try:
            rows = count_rows(model.rules, arrays)
        except InvalidInput:
            events.request_refused()
            raise
        timeout = model.timeout_s if timeout_s is None else min(timeout_s, model.timeout_s)
        deadline = asyncio.get_running_loop().time() + timeout
        succeeded = False
        try:
            result = await model.batcher.submit(
                Request(arrays, rows),
                rows=rows,
                key=model.key(arrays),
                deadline=deadline,
                abandon_on=abandon_on,
            )
            succeeded = True
            return result
        except QueueFullError as exc:
            raise QueueFull(
                f"model '{model.name}' is overloaded: {exc}", self._retry_after_s
            ) from exc
        except DeadlineError as exc:
            raise DeadlineExceeded(
                f"model '{model.name}': request timed out after {timeout * 1000:g} ms in the queue"
            ) from exc
        except BatchFailedError as exc:
            raise ModelExecutionError(f"model '{model.name}' failed: {exc}") from exc
        except BatcherClosedError as exc:
            raise ModelNotReady(f"model '{model.name}' is shutting down") from exc
        finally:
            events.request_done(succeeded, time.perf_counter() - started)
