"""GPU metrics through NVML (`nvidia-ml-py`, in the `gpu` extra), labelled by GPU uuid.

Without the package, the driver or a GPU there is no collector at all, so the series are
absent rather than zero: a dashboard then shows "no data", not a GPU that looks idle. Values
are read from NVML at each scrape; they describe the device, not one process.
"""

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

try:
    import pynvml
except ImportError:  # the `gpu` extra is not installed
    pynvml = None

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """Memory used and total (bytes) and utilization (0 to 1) of each GPU NVML lists."""

    def __init__(self, nvml: Any, handles: Iterable[Any]) -> None:
        self._nvml = nvml
        self._devices = [(handle, _text(nvml.nvmlDeviceGetUUID(handle))) for handle in handles]

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "inscale_gpu_memory_used_bytes",
            "GPU memory in use (all processes).",
            labels=["gpu_uuid"],
        )
        total = GaugeMetricFamily(
            "inscale_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu_uuid"]
        )
        busy = GaugeMetricFamily(
            "inscale_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran on the GPU (0 to 1).",
            labels=["gpu_uuid"],
        )
        for handle, uuid in self._devices:
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception as exc:  # a GPU that fell off the bus: skip it, keep serving
                log.warning("NVML could not read GPU %s: %s", uuid, exc)
                continue
            used.add_metric([uuid], float(memory.used))
            total.add_metric([uuid], float(memory.total))
            busy.add_metric([uuid], rates.gpu / 100)
        yield from (used, total, busy)


def gpu_collector(nvml: Any = pynvml) -> GpuCollector | None:
    """A collector for the GPUs present, or None when there are none (or no NVML)."""
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        collector = GpuCollector(nvml, handles)
    except Exception as exc:  # no driver, or no GPU: NVMLError and its many subclasses
        log.debug("no GPU metrics: %s", exc)
        return None
    if not handles:
        return None
    log.info("GPU metrics for %d device(s) through NVML", len(handles))
    return collector


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
