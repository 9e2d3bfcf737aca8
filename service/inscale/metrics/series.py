"""Counters and histograms kept in plain Python numbers, exposed through a custom collector.

prometheus-client's own `Counter` and `Histogram` take a lock on every `inc` and walk their
buckets on every `observe`; several of those per request cost about 3% of the cheapest
request on these machines (measured A/B, see the issue note and README). Every observation
inscale makes happens on the event loop's thread, and so does every scrape (`GET /metrics` is
an `async def` route), so a family here needs no lock: an observation is a `bisect` and two
additions. Scrapes read the numbers through prometheus-client's public collector API
(`Collector`, `CounterMetricFamily`, `HistogramMetricFamily`).

With `--workers N` the values must live in prometheus-client's multiprocess files instead, so
`inscale.metrics.prometheus` then uses its `Counter` and `Histogram`, which have the same
`labels(...).inc()` / `.observe()` shape as these families.
"""

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class CounterLike(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...


class HistogramLike(Protocol):
    def observe(self, amount: float) -> None: ...


class CounterFamily(Protocol):
    def labels(self, *values: str) -> CounterLike: ...


class HistogramFamily(Protocol):
    def labels(self, *values: str) -> HistogramLike: ...


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # ends with +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1  # the first bucket with amount <= le
        self.total += amount


class _Family(Collector):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        registry.register(self)

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
        return tuple(str(v) for v in values)


class LocalCounter(_Family):
    """A labelled counter family (`name` without `_total`, as prometheus-client takes it)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._children: dict[tuple[str, ...], CounterChild] = {}
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> CounterChild:
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in self._children.items():
            family.add_metric(list(key), child.value)
        yield family


class LocalHistogram(_Family):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = (*buckets, float("inf"))
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> HistogramChild:
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self._bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        # `le` as the library writes it, so series look the same in either mode.
        names = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        for key, child in self._children.items():
            cumulative = list(accumulate(child.counts))
            family.add_metric(list(key), list(zip(names, cumulative, strict=True)), child.total)
        yield family
