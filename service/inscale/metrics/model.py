"""The Prometheus consumer of a model version's events: the per-model series.

One instance per model version, made by `Metrics.model` when the version loads; its children
are labelled once here, so the hot path never calls `.labels()`. Whichever protocol served a
request, the same events reach this consumer, so the series cannot differ by protocol.
"""

import enum

from inscale.batch_events import BatchRecord, DropReason
from inscale.metrics.series import CounterFamily, HistogramFamily


class Outcome(enum.StrEnum):
    """How a request for a model ended: the `outcome` label of `inscale_requests_total`."""

    SUCCESS = "success"
    REJECTED = "rejected"  # queue full (503)
    OVERLOADED = "overloaded"  # admission: would have finished after its deadline (503)
    PREEMPTED = "preempted"  # pushed out of a full queue by a higher priority (503)
    LATE = "late"  # dropped before its run: it could no longer meet its deadline
    TIMEOUT = "timeout"  # deadline passed while queued
    BAD_INPUT = "bad_input"  # refused as invalid after it named a known model (4xx)
    MODEL_ERROR = "model_error"  # the model run raised (500)
    CANCELLED = "cancelled"  # the client went away while queued
    UNAVAILABLE = "unavailable"  # still queued when the version shut down (503)


_DROPPED = {
    DropReason.REJECTED: Outcome.REJECTED,
    DropReason.SHED: Outcome.OVERLOADED,
    DropReason.PREEMPTED: Outcome.PREEMPTED,
    DropReason.LATE: Outcome.LATE,
    DropReason.EXPIRED: Outcome.TIMEOUT,
    DropReason.CANCELLED: Outcome.CANCELLED,
    DropReason.CLOSED: Outcome.UNAVAILABLE,
}


class ModelMetrics:
    """The labelled children of one model version (see `inscale.events.ModelEvents`)."""

    __slots__ = (
        "_admitted",
        "_bad_input",
        "_batch_size",
        "_compute",
        "_dropped",
        "_duration",
        "_model_error",
        "_queue",
        "_rows",
        "_runs",
        "_success",
    )

    def __init__(
        self,
        labels: tuple[str, str],
        *,
        requests: CounterFamily,
        admitted: CounterFamily,
        rows: CounterFamily,
        runs: CounterFamily,
        duration: HistogramFamily,
        queue_time: HistogramFamily,
        compute_time: HistogramFamily,
        batch_size: HistogramFamily,
    ) -> None:
        # Every outcome's series exists from the start, at 0, so rates are defined at once.
        outcomes = {o: requests.labels(*labels, o.value) for o in Outcome}
        self._success = outcomes[Outcome.SUCCESS]
        self._model_error = outcomes[Outcome.MODEL_ERROR]
        self._bad_input = outcomes[Outcome.BAD_INPUT]
        self._dropped = {reason: outcomes[outcome] for reason, outcome in _DROPPED.items()}
        self._admitted = admitted.labels(*labels)
        self._rows = rows.labels(*labels)
        self._runs = runs.labels(*labels)
        self._duration = duration.labels(*labels)
        self._queue = queue_time.labels(*labels)
        self._compute = compute_time.labels(*labels)
        self._batch_size = batch_size.labels(*labels)

    def request_queued(self, rows: int) -> None:
        # In flight and queue depth are read from the batcher when scraped.
        self._admitted.inc()

    def request_dropped(self, reason: DropReason) -> None:
        self._dropped[reason].inc()

    def batch_finished(self, record: BatchRecord) -> None:
        self._runs.inc()
        self._rows.inc(record.rows)
        self._batch_size.observe(record.rows)
        self._compute.observe(record.compute_seconds)
        observe = self._queue.observe
        for seconds in record.queue_seconds:
            observe(seconds)
        (self._model_error if record.failed else self._success).inc(record.requests)

    def request_refused(self) -> None:
        self._bad_input.inc()

    def request_done(self, succeeded: bool, seconds: float) -> None:
        if succeeded:
            self._duration.observe(seconds)
