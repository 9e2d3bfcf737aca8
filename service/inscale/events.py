"""The one stream of events about a model version's requests, and its fan-out to consumers.

The batcher reports what happens in the queue and in runs (`BatchEvents`); the data plane adds
what only it sees: a request refused as bad input before it was queued, and the end-to-end
time of each request it handed to the batcher. Statistics (`inscale.statistics`) and Prometheus
(`inscale.metrics.model`) both subscribe, so each fact is counted once, where it happens,
and every consumer sees the same events whichever protocol served the request.

Every event is raised on the event loop's thread: consumers need no lock.
"""

from typing import Protocol

from inscale.batch_events import BatchEvents, BatchRecord, DropReason


class ModelEvents(BatchEvents, Protocol):
    def request_refused(self) -> None:
        """A request for this version was bad input (400), found before it was queued."""

    def request_done(self, succeeded: bool, seconds: float) -> None:
        """A request handed to the batcher ended: answered, or refused, dropped or failed
        there.

        `seconds` runs from the request's arrival at its protocol layer to its result.
        """


class Fanout:
    """Hands every event to each consumer in turn."""

    __slots__ = ("_consumers",)

    def __init__(self, *consumers: ModelEvents) -> None:
        self._consumers = consumers

    def request_queued(self, rows: int) -> None:
        for consumer in self._consumers:
            consumer.request_queued(rows)

    def request_dropped(self, reason: DropReason) -> None:
        for consumer in self._consumers:
            consumer.request_dropped(reason)

    def batch_finished(self, record: BatchRecord) -> None:
        for consumer in self._consumers:
            consumer.batch_finished(record)

    def request_refused(self) -> None:
        for consumer in self._consumers:
            consumer.request_refused()

    def request_done(self, succeeded: bool, seconds: float) -> None:
        for consumer in self._consumers:
            consumer.request_done(succeeded, seconds)
