"""What the batcher reports: its event stream, the records in it, and its current load.

Kept apart from `inscale.batcher` so that consumers of the events (statistics, metrics) need
not import the batching loop. Like the batcher, this imports nothing else from inscale.
"""

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

R = TypeVar("R")


class DropReason(enum.Enum):
    REJECTED = "queue_full"  # refused: the queue was full
    SHED = "overloaded"  # refused: estimated to finish after its deadline (admission)
    PREEMPTED = "preempted"  # queued, pushed out of a full queue by a higher priority
    LATE = "late"  # queued, dropped before its run: it could no longer meet its deadline
    EXPIRED = "timeout"  # deadline passed while queued
    CANCELLED = "cancelled"  # caller went away while queued
    CLOSED = "closed"  # the batcher shut down with the request still queued


# The records made per run are named tuples: as immutable as frozen dataclasses, and several
# times cheaper to build on a path that runs once per batch.


class StepTimes(NamedTuple):
    """How long the three steps of one run took, in nanoseconds: gathering the payloads into
    the model's inputs, the model itself, and splitting its outputs back per request."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


class Ran(NamedTuple, Generic[R]):
    """What `run_batch` returns: one result per payload, in order, and its step times."""

    results: Sequence[R]
    steps: StepTimes = StepTimes()


class BatchRecord(NamedTuple):
    """What one model run did."""

    requests: int
    rows: int
    queue_seconds: tuple[float, ...]  # per request, in batch order
    compute_seconds: float  # from the hand-off to the worker thread to the results
    steps: StepTimes  # as `run_batch` measured them (zeros when it failed)
    failed: bool
    finished_unix: float  # wall-clock time the run ended


class BatchEvents(Protocol):
    """The one stream of what happens to requests in the batcher.

    Every counter about queueing and runs (statistics, Prometheus, later consumers) is built
    from these, so each event is counted in one place. All are called on the event loop's
    thread, so a listener needs no lock.
    """

    def request_queued(self, rows: int) -> None: ...

    def request_dropped(self, reason: DropReason) -> None: ...

    def batch_finished(self, record: BatchRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class Load:
    """What is in the batcher now (current values, not counters)."""

    queued: int  # requests waiting
    queued_rows: int
    running_batches: int
    running_requests: int

    @property
    def in_flight(self) -> int:
        return self.queued + self.running_requests
