"""The server's Prometheus metrics over a load test's window, in one JSONL format.

Either sampled from the server's own `GET /metrics` every second while the test runs, or
fetched afterwards from a real Prometheus (`query_range`) for the same window. Each line is
one instant: {"time": epoch seconds, "series": [[name, {label: value}, value], ...]}. Only
the series the report reads are kept (histogram buckets would make the file large).
"""

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

SERIES = (
    "inscale_requests_total",  # by outcome: success, rejected (503), timeout (504), ...
    "inscale_batch_size_rows_sum",  # rows per model run: sum / count over a window
    "inscale_batch_size_rows_count",
    "inscale_queue_duration_seconds_sum",
    "inscale_queue_duration_seconds_count",
    "inscale_requests_in_flight",  # queued or running now
    "inscale_queue_depth_requests",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)
Labels = dict[str, str]


@dataclass(frozen=True)
class Instant:
    time: float
    series: list[tuple[str, Labels, float]]

    def total(self, name: str, **match: str) -> float | None:
        """Sum of a metric over the series whose labels include `match`; None if absent."""
        values = [
            value
            for series_name, labels, value in self.series
            if series_name == name and all(labels.get(k) == v for k, v in match.items())
        ]
        return sum(values) if values else None


def parse_exposition(text: str) -> list[tuple[str, Labels, float]]:
    wanted = set(SERIES)
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    ]


@contextmanager
def sampling(url: str, out: Path, interval_s: float = 1.0) -> Iterator[None]:
    """Scrape `url/metrics` every `interval_s` into `out` (one line per scrape) until exit.

    A scrape that fails (the server busy past the timeout, or gone) is skipped, not fatal:
    an overloaded server is exactly what a load test looks at.
    """
    stop = threading.Event()

    def scrape_forever() -> None:
        with httpx.Client(timeout=interval_s * 5) as client, out.open("w") as sink:
            next_at = time.monotonic()
            while not stop.is_set():
                try:
                    text = client.get(f"{url}/metrics").text
                    line = {"time": time.time(), "series": parse_exposition(text)}
                    sink.write(json.dumps(line) + "\n")
                    sink.flush()
                except (httpx.HTTPError, ValueError):
                    pass
                next_at += interval_s
                stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=scrape_forever, name="metrics-sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s * 10)


def from_prometheus(
    prometheus: str, start: float, end: float, out: Path, selector: str = "", step_s: float = 1
) -> int:
    """Fetch SERIES for [start, end] from a Prometheus server into `out`; returns instants.

    `selector` (e.g. `job="inscale"`) keeps other targets' series out, such as Prometheus's
    own process_resident_memory_bytes.
    """
    by_time: dict[float, list[tuple[str, Labels, float]]] = defaultdict(list)
    with httpx.Client(base_url=prometheus, timeout=30) as client:
        for name in SERIES:
            answer = client.get(
                "/api/v1/query_range",
                params={
                    "query": f"{name}{{{selector}}}",
                    "start": f"{start:.3f}",
                    "end": f"{end:.3f}",
                    "step": f"{step_s}",
                },
            )
            answer.raise_for_status()
            for result in answer.json()["data"]["result"]:
                labels = {k: v for k, v in result["metric"].items() if k != "__name__"}
                for when, value in result["values"]:
                    by_time[float(when)].append((name, labels, float(value)))
    with out.open("w") as sink:
        for when in sorted(by_time):
            sink.write(json.dumps({"time": when, "series": by_time[when]}) + "\n")
    return len(by_time)


def read_instants(path: Path) -> list[Instant]:
    if not path.exists():
        return []
    instants = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        series = [(name, dict(labels), float(value)) for name, labels, value in raw["series"]]
        instants.append(Instant(float(raw["time"]), series))
    return instants
