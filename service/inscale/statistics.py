"""A model version's statistics since it loaded, kept from its event stream.

`GET /models/{name}` and the V2 statistics extension (HTTP, and gRPC later) report these;
Prometheus has its own consumer of the same events (`inscale.metrics.model`). Only the event
loop's thread writes here, and readers get copies.
"""

from dataclasses import dataclass, field, replace

from inscale.batch_events import BatchRecord, DropReason, StepTimes


@dataclass(slots=True)
class StepTotals:
    """Cumulative step times over `count` runs (per batch size) or requests (per request)."""

    count: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0

    def add(self, steps: StepTimes, times: int = 1) -> None:
        self.count += times
        self.input_ns += steps.input_ns * times
        self.infer_ns += steps.infer_ns * times
        self.output_ns += steps.output_ns * times


@dataclass(slots=True)
class Durations:
    count: int = 0
    ns: int = 0


@dataclass(slots=True)
class Snapshot:
    """Counters since load. Each request is counted once by how it ended."""

    submitted: int = 0  # requests that entered the queue
    refused: int = 0  # bad input, found before queueing
    dropped: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))
    succeeded: int = 0  # requests whose run succeeded
    failed: int = 0  # requests whose run raised
    runs: int = 0
    rows: int = 0
    queue_seconds: float = 0.0  # summed over requests that ran
    compute_seconds: float = 0.0  # summed over runs
    last_run_unix: float = 0.0
    per_request: StepTotals = field(default_factory=StepTotals)  # successful requests only
    per_batch_size: dict[int, StepTotals] = field(default_factory=dict)  # successful runs
    done_ok: Durations = field(default_factory=Durations)  # queued requests answered
    done_failed: Durations = field(default_factory=Durations)  # queued requests that failed


class VersionStatistics:
    """The statistics consumer of one model version's events (see `inscale.events`)."""

    __slots__ = ("_s",)

    def __init__(self) -> None:
        self._s = Snapshot()

    def snapshot(self) -> Snapshot:
        s = self._s
        return replace(
            s,
            dropped=dict(s.dropped),
            per_request=replace(s.per_request),
            per_batch_size={size: replace(t) for size, t in s.per_batch_size.items()},
            done_ok=replace(s.done_ok),
            done_failed=replace(s.done_failed),
        )

    # -- events ----------------------------------------------------------------------------

    def request_queued(self, rows: int) -> None:
        self._s.submitted += 1

    def request_dropped(self, reason: DropReason) -> None:
        self._s.dropped[reason] += 1

    def batch_finished(self, record: BatchRecord) -> None:
        s = self._s
        s.runs += 1
        s.rows += record.rows
        s.queue_seconds += sum(record.queue_seconds)
        s.compute_seconds += record.compute_seconds
        s.last_run_unix = record.finished_unix
        if record.failed:
            s.failed += record.requests
            return
        s.succeeded += record.requests
        s.per_request.add(record.steps, record.requests)
        size = s.per_batch_size.get(record.rows)
        if size is None:
            size = s.per_batch_size[record.rows] = StepTotals()
        size.add(record.steps)

    def request_refused(self) -> None:
        self._s.refused += 1

    def request_done(self, succeeded: bool, seconds: float) -> None:
        durations = self._s.done_ok if succeeded else self._s.done_failed
        durations.count += 1
        durations.ns += round(seconds * 1e9)
