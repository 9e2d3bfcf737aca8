"""Writes the Grafana dashboards in `dashboards/` (edit this file, then run it).

    python monitoring/grafana/build_dashboards.py

Two dashboards: `inscale-overview.json` (what one looks at when paged: traffic, failures,
HTTP and gRPC side by side, latency, batching, memory and CPU, input and prediction drift)
and `inscale-scaling.json` (replicas, per-replica throughput, latency as load grows). Every
query is run against a real Prometheus by tests/test_monitoring_prometheus.py (the drift
row's by tests/test_drift_e2e.py); the panels here are plain Grafana JSON (schema 39).
"""

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model", instance=~"$instance"'  # the two template variables
# Outcomes the server answers for (its capacity or the model), as the recording rule counts.
SERVER_FAILURES = "rejected|overloaded|preempted|late|timeout|model_error"
INST = 'job="inscale", instance=~"$instance"'
RATE = "$__rate_interval"
# gRPC series carry `method` and `code` (no model): the inference methods, and the codes that
# are the server's fault (errors.GRPC_STATUS in inscale.protocols.grpc).
GRPC_INFER = 'method=~"ModelInfer|ModelStreamInfer"'
GRPC_SERVER_FAULTS = 'code=~"UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL"'

Panel = dict[str, Any]


def rate_sum(metric: str, by: str, match: str = "") -> str:
    """`sum by (by) (rate(metric{model, instance[, match]}[$__rate_interval]))`."""
    labels = f"{SEL}, {match}" if match else SEL
    return f"sum by ({by}) (rate({metric}{{{labels}}}[{RATE}]))"


def grpc_server_error_ratio() -> str:
    """Per method, the share of gRPC calls that failed through the server's fault.

    A code's series exists only once a call has ended with it, so the failures fall back to
    0 x all calls: the ratio reads 0, not "no data", while nothing failed.
    """
    calls = f"sum by (method) (rate(inscale_grpc_requests_total{{{INST}}}[{RATE}]))"
    failed = (
        "sum by (method) (rate(inscale_grpc_requests_total"
        f"{{{INST}, {GRPC_SERVER_FAULTS}}}[{RATE}]))"
    )
    return f"({failed} or 0 * {calls}) / {calls}"


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: list[tuple[str, str]],
    pos: tuple[int, int, int, int],
    *,
    stack: bool = False,
    overrides: list[dict[str, Any]] | None = None,
    lines: tuple[float, ...] = (),
    max_value: float | None = None,
) -> Panel:
    """A time series panel; `lines` draws dashed threshold lines (orange, then red)."""
    x, y, w, h = pos
    panel: Panel = {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "fillOpacity": 25 if stack else 8,
                    "lineWidth": 1,
                    "stacking": {"mode": "normal" if stack else "none"},
                    "showPoints": "never",
                },
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(q, legend, chr(65 + i)) for i, (q, legend) in enumerate(queries)],
    }
    defaults = panel["fieldConfig"]["defaults"]
    if lines:
        defaults["thresholds"] = thresholds(lines)
        defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    if max_value is not None:
        defaults["max"] = max_value
    return panel


def thresholds(lines: tuple[float, ...]) -> dict[str, Any]:
    colors = ["orange", "red"]
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": colors[min(i, 1)], "value": v} for i, v in enumerate(lines)]
    return {"mode": "absolute", "steps": steps}


def bargauge(
    title: str,
    description: str,
    unit: str,
    expr: str,
    legend: str,
    pos: tuple[int, int, int, int],
    lines: tuple[float, ...],
) -> Panel:
    """Horizontal bars of an instant query's current values, coloured by `lines`."""
    x, y, w, h = pos
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {"unit": unit, "min": 0, "thresholds": thresholds(lines)},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
        "targets": [{**target(expr, legend, "A"), "instant": True, "range": False}],
    }


def heatmap(title: str, description: str, expr: str, pos: tuple[int, int, int, int]) -> Panel:
    x, y, w, h = pos
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "options": {
            "calculate": False,
            "yAxis": {"unit": "short"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": True},
        },
        "targets": [{**target(expr, "{{le}}", "A"), "format": "heatmap"}],
    }


def stat(
    title: str, description: str, unit: str, expr: str, legend: str, pos: tuple[int, int, int, int]
) -> Panel:
    x, y, w, h = pos
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "targets": [target(expr, legend, "A")],
    }


def row(title: str, y: int) -> Panel:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
    }


def percentiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"{by}, le" if by else "le"
    prefix = "{{" + by + "}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def variables() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {"text": "Prometheus", "value": "prometheus"},
            },
            query_var("model", "Model", "label_values(inscale_requests_total, model)"),
            query_var("instance", "Replica", "label_values(inscale_build_info, instance)"),
        ]
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["inscale", "onnx", "serving"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": variables(),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    failures = 'outcome!="success"'
    server_failures = f'outcome=~"{SERVER_FAILURES}"'
    panels = [
        row("Traffic and failures", 0),
        timeseries(
            "Requests per second",
            "Requests answered per model, every outcome; sums over replicas and versions.",
            "reqps",
            [(f"sum by (model) (rate(inscale_requests_total{{{SEL}}}[{RATE}]))", "{{model}}")],
            (0, 1, 8, 8),
        ),
        timeseries(
            "Rows (inferences) per second",
            "Rows computed by model runs; a request carries one or more rows.",
            "suffix: rows/s",
            [
                (
                    f"sum by (model) (rate(inscale_inference_rows_total{{{SEL}}}[{RATE}]))",
                    "{{model}}",
                )
            ],
            (8, 1, 8, 8),
        ),
        timeseries(
            "Failures by reason",
            "rejected = queue full (503), overloaded = refused at admission, it could not "
            "finish by its deadline or SLO (503), preempted = pushed out by a higher priority "
            "(503), late = dropped before its run, timeout = deadline passed in the queue "
            "(504), bad_input = 400, model_error = the model raised (500), cancelled = client "
            "left.",
            "reqps",
            [
                (
                    f"sum by (outcome) (rate(inscale_requests_total{{{SEL}, {failures}}}[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            (16, 1, 8, 8),
            stack=True,
        ),
        timeseries(
            "Server error ratio",
            "Share of requests that failed through the server's fault or capacity (rejected, "
            "overloaded, preempted, late, timeout, model_error); the error-ratio alert fires "
            "on the same figure.",
            "percentunit",
            [
                (
                    rate_sum("inscale_requests_total", "model", server_failures)
                    + " / "
                    + rate_sum("inscale_requests_total", "model"),
                    "{{model}}",
                )
            ],
            (0, 9, 12, 7),
        ),
        timeseries(
            "HTTP responses by status",
            "Every HTTP request, including those that never reached a model (404, 413, ...).",
            "reqps",
            [
                (
                    "sum by (status) "
                    f'(rate(inscale_http_requests_total{{instance=~"$instance"}}[{RATE}]))',
                    "{{status}}",
                )
            ],
            (12, 9, 12, 7),
            stack=True,
        ),
        row("Protocols", 16),
        timeseries(
            "Requests per second by protocol",
            "Every HTTP request (probes and scrapes included) and every gRPC call (each request "
            "of a stream once); not per model: the panels above count every protocol.",
            "reqps",
            [
                (f"sum(rate(inscale_http_requests_total{{{INST}}}[{RATE}]))", "HTTP"),
                (f"sum(rate(inscale_grpc_requests_total{{{INST}}}[{RATE}]))", "gRPC"),
            ],
            (0, 17, 6, 7),
            stack=True,
        ),
        timeseries(
            "gRPC calls by status code",
            "Every gRPC call by its status code: INVALID_ARGUMENT and NOT_FOUND are the "
            "client's, UNAVAILABLE (not ready, queue full, shutting down), DEADLINE_EXCEEDED "
            "and INTERNAL the server's.",
            "reqps",
            [(f"sum by (code) (rate(inscale_grpc_requests_total{{{INST}}}[{RATE}]))", "{{code}}")],
            (6, 17, 6, 7),
            stack=True,
        ),
        timeseries(
            "gRPC server error ratio",
            "Share of each method's calls that failed through the server's fault (UNAVAILABLE, "
            "DEADLINE_EXCEEDED, INTERNAL); 0 while none did.",
            "percentunit",
            [(grpc_server_error_ratio(), "{{method}}")],
            (12, 17, 6, 7),
        ),
        timeseries(
            "gRPC inference latency",
            "ModelInfer calls, and each request of a ModelStreamInfer stream, from the call's "
            "arrival to its answer.",
            "s",
            [
                (
                    f"histogram_quantile({q}, sum by (method, le) (rate("
                    f"inscale_grpc_request_duration_seconds_bucket{{{INST}, {GRPC_INFER}}}"
                    f"[{RATE}])))",
                    f"{{{{method}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            (18, 17, 6, 7),
        ),
        row("Latency", 24),
        timeseries(
            "End-to-end latency",
            "Answered inference requests, from the first byte read to the last byte sent.",
            "s",
            percentiles("inscale_request_duration_seconds"),
            (0, 25, 8, 8),
        ),
        timeseries(
            "Time in the queue",
            "How long requests waited for a batch to start.",
            "s",
            percentiles("inscale_queue_duration_seconds"),
            (8, 25, 8, 8),
        ),
        timeseries(
            "Compute time per model run",
            "Merge, ONNX Runtime and split for one batch, observed once per run.",
            "s",
            percentiles("inscale_compute_duration_seconds"),
            (16, 25, 8, 8),
        ),
        row("Batching", 33),
        heatmap(
            "Batch size distribution",
            "Model runs per batch-size bucket (rows per run); brighter is more runs.",
            f"sum by (le) (increase(inscale_batch_size_rows_bucket{{{SEL}}}[{RATE}]))",
            (0, 34, 8, 8),
        ),
        timeseries(
            "Average batch size",
            "Rows per model run: how well concurrent requests are merged.",
            "suffix: rows",
            [
                (
                    f"sum by (model) (rate(inscale_inference_rows_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (model) (rate(inscale_model_runs_total{{{SEL}}}[{RATE}]))",
                    "{{model}}",
                )
            ],
            (8, 34, 8, 8),
        ),
        timeseries(
            "Queue depth and requests in flight",
            "Queued: waiting for a batch. In flight: accepted and not yet answered.",
            "short",
            [
                (f"sum by (model) (inscale_queue_depth_requests{{{SEL}}})", "queued {{model}}"),
                (f"sum by (model) (inscale_requests_in_flight{{{SEL}}})", "in flight {{model}}"),
            ],
            (16, 34, 8, 8),
        ),
        row("Resources", 42),
        timeseries(
            "Memory",
            "Resident memory of each replica (all its workers), and GPU memory in use where "
            "a GPU is present.",
            "bytes",
            [
                (
                    f"sum by (instance) (process_resident_memory_bytes{{{INST}}})",
                    "RSS {{instance}}",
                ),
                (
                    f"sum by (instance, gpu_uuid) (inscale_gpu_memory_used_bytes{{{INST}}})",
                    "GPU {{gpu_uuid}}",
                ),
            ],
            (0, 43, 7, 8),
        ),
        timeseries(
            "Memory used of its limit",
            "Resident memory over the cgroup limit (or the machine's memory): the kernel "
            "kills the process at 100%; the memory alert fires above 90%.",
            "percentunit",
            [
                (
                    f"sum by (instance) (process_resident_memory_bytes{{{INST}}})"
                    f" / max by (instance) (inscale_memory_limit_bytes{{{INST}}})",
                    "{{instance}}",
                )
            ],
            (7, 43, 5, 8),
        ),
        timeseries(
            "CPU",
            "CPU time per second of each replica: 1.0 is one core fully busy.",
            "suffix: cores",
            [
                (
                    f"sum by (instance) (rate(process_cpu_seconds_total{{{INST}}}[{RATE}]))",
                    "{{instance}}",
                )
            ],
            (12, 43, 6, 8),
        ),
        timeseries(
            "GPU utilization",
            "Share of time a kernel ran, per GPU; empty without a GPU.",
            "percentunit",
            [(f"max by (gpu_uuid) (inscale_gpu_utilization_ratio{{{INST}}})", "{{gpu_uuid}}")],
            (18, 43, 6, 8),
        ),
        row("Models", 51),
        stat(
            "Model load time",
            "How long the last load of each version took (sessions, checks, warm-up).",
            "s",
            f"max by (model, version) (inscale_model_load_duration_seconds{{{SEL}}})",
            "{{model}} v{{version}}",
            (0, 52, 8, 5),
        ),
        stat(
            "Model size",
            "Files of each version on disk, which its weights occupy in memory once loaded.",
            "bytes",
            f"max by (model, version) (inscale_model_size_bytes{{{SEL}}})",
            "{{model}} v{{version}}",
            (8, 52, 8, 5),
        ),
        stat(
            "Workers with the model ready",
            "Worker processes where each version is READY, summed over replicas.",
            "short",
            f'sum by (model, version) (inscale_model_state{{{SEL}, state="READY"}})',
            "{{model}} v{{version}}",
            (16, 52, 8, 5),
        ),
        timeseries(
            "Learned run time by batch size",
            "What admission and the adaptive queue delay believe a model run costs, per batch "
            "size (the slowest replica's): a rise means the model or the machine got slower.",
            "s",
            [
                (
                    f"max by (model, batch_size) (inscale_estimated_run_duration_seconds{{{SEL}}})",
                    "{{model}} x{{batch_size}}",
                )
            ],
            (0, 57, 12, 8),
        ),
        timeseries(
            "Admitted and shed",
            "Requests admitted into the queues, and those refused or dropped for lack of "
            "capacity or time, by reason.",
            "reqps",
            [
                (
                    f"sum by (model) (rate(inscale_admitted_requests_total{{{SEL}}}[{RATE}]))",
                    "admitted {{model}}",
                ),
                (
                    f"sum by (outcome) (rate(inscale_requests_total{{{SEL}, "
                    f'outcome=~"rejected|overloaded|preempted|late|timeout"}}[{RATE}]))',
                    "{{outcome}}",
                ),
            ],
            (12, 57, 12, 8),
        ),
        *drift_panels(65),
    ]
    return dashboard(
        "inscale-overview",
        "inscale: overview",
        "Throughput, failures, latency percentiles, batching, memory, CPU and input and "
        "prediction drift of inscale.",
        panels,
    )


def drift_panels(y: int) -> list[Panel]:
    """The Drift row: served rows against each model's reference profile.

    Scores are the worst replica's (each scores its own window); the class mix is weighted
    by the rows each replica sampled, as the recording rules do. Series exist only for
    versions that carry a reference (drift_reference.json).
    """
    version = "{{model}} v{{version}}"
    rows = f"inscale_drift_window_rows{{{SEL}}}"
    share = (
        f"sum by (model, version, output, class) (inscale_drift_prediction_share{{{SEL}}}"
        f" * on (instance, job, model, version) group_left () {rows})"
        f" / on (model, version) group_left () sum by (model, version) ({rows})"
    )
    return [
        row("Drift", y),
        timeseries(
            "Input drift (worst feature PSI)",
            "Population stability index of the served inputs against the reference, for the "
            "worst input feature, and the mean over all features. Under 0.1 stable, 0.1 to 0.25 "
            "a moderate change, over 0.25 a shift: InscaleInputDrift fires after 10 minutes "
            "over 0.25 on 500 sampled rows or more (fewer rows score noise: see Drift window "
            "rows).",
            "none",
            [
                (f"max by (model, version) (inscale_drift_input_score{{{SEL}}})", version),
                (
                    f"max by (model, version) (inscale_drift_input_mean_psi{{{SEL}}})",
                    version + " mean",
                ),
            ],
            (0, y + 1, 8, 8),
            lines=(0.1, 0.25),
        ),
        timeseries(
            "Prediction drift (output PSI)",
            "PSI of each output against the reference: for a classifier the predicted-class "
            "mix, for a float output its worst column. InscalePredictionShift fires after 10 "
            "minutes over 0.2 on 500 sampled rows or more.",
            "none",
            [
                (
                    f"max by (model, version, output) (inscale_drift_output_psi{{{SEL}}})",
                    version + " {{output}}",
                )
            ],
            (8, y + 1, 8, 8),
            lines=(0.1, 0.2),
        ),
        bargauge(
            "Worst input features now",
            "The ten input features furthest from the reference by PSI, by name (each "
            "replica exports its top_k, drift.top_k in the model config): where to look first "
            "when the input score rises.",
            "none",
            f"topk(10, max by (model, version, feature) (inscale_drift_feature_psi{{{SEL}}}))",
            version + " {{feature}}",
            (16, y + 1, 8, 8),
            lines=(0.1, 0.25),
        ),
        timeseries(
            "Prediction distribution",
            "Share of each predicted class in the drift window (class outputs; other = a class "
            "the reference never saw), over all replicas weighted by their sampled rows. Pick "
            "one model in the Model variable to read the stack as 100%.",
            "percentunit",
            [(share, version + " {{output}}={{class}}")],
            (0, y + 9, 16, 8),
            stack=True,
        ),
        timeseries(
            "Drift window rows",
            "Sampled rows each version's scores rest on, summed over replicas, and how much of "
            "the window (drift.window_s) has elapsed on the slowest-starting replica. The "
            "alerts count a replica once its window holds 500 rows (the dashed line).",
            "short",
            [
                (f"sum by (model, version) ({rows})", version),
                (
                    f"min by (model, version) (inscale_drift_window_seconds{{{SEL}}})",
                    version + " seconds",
                ),
            ],
            (16, y + 9, 8, 8),
            lines=(500,),
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* seconds$"},
                    "properties": [
                        {"id": "unit", "value": "s"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
    ]


def scaling() -> dict[str, Any]:
    per_replica = rate_sum("inscale_requests_total", "instance")
    total = f"sum(rate(inscale_requests_total{{{SEL}}}[{RATE}]))"
    p99 = (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(inscale_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))"
    )
    panels = [
        stat(
            "Replicas",
            "Replicas Prometheus scrapes that run inscale.",
            "short",
            'count(inscale_build_info{instance=~"$instance"})',
            "replicas",
            (0, 0, 6, 6),
        ),
        timeseries(
            "Replicas over time",
            "Replicas reporting metrics.",
            "short",
            [('count(inscale_build_info{instance=~"$instance"})', "replicas")],
            (6, 0, 18, 6),
        ),
        timeseries(
            "Throughput per replica",
            "Requests per second each replica answers; uneven lines mean uneven load balancing.",
            "reqps",
            [(per_replica, "{{instance}}")],
            (0, 6, 12, 8),
            stack=True,
        ),
        timeseries(
            "Latency as load grows",
            "Total requests per second (right axis) against end-to-end p99 (left axis).",
            "s",
            [(p99, "p99 latency"), (total, "requests/s")],
            (12, 6, 12, 8),
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "requests/s"},
                    "properties": [
                        {"id": "unit", "value": "reqps"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
        timeseries(
            "p99 latency per replica",
            "End-to-end p99 of each replica: one slow replica shows here, not in the total.",
            "s",
            [
                (
                    "histogram_quantile(0.99, sum by (instance, le) "
                    f"(rate(inscale_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                    "{{instance}}",
                )
            ],
            (0, 14, 12, 8),
        ),
        timeseries(
            "Mean time in the queue (autoscaling signal)",
            "Average queue wait per request, per replica: scale out when it grows.",
            "s",
            [
                (
                    rate_sum("inscale_queue_duration_seconds_sum", "instance")
                    + " / "
                    + rate_sum("inscale_queue_duration_seconds_count", "instance"),
                    "{{instance}}",
                )
            ],
            (12, 14, 12, 8),
        ),
        timeseries(
            "CPU per replica",
            "Cores busy per replica.",
            "suffix: cores",
            [
                (
                    f"sum by (instance) (rate(process_cpu_seconds_total{{{INST}}}[{RATE}]))",
                    "{{instance}}",
                )
            ],
            (0, 22, 12, 8),
        ),
        timeseries(
            "Average batch size per replica",
            "Rows per model run; grows with load when batching works.",
            "suffix: rows",
            [
                (
                    f"sum by (instance) (rate(inscale_inference_rows_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (instance) (rate(inscale_model_runs_total{{{SEL}}}[{RATE}]))",
                    "{{instance}}",
                )
            ],
            (12, 22, 12, 8),
        ),
    ]
    return dashboard(
        "inscale-scaling",
        "inscale: scaling",
        "Replicas, throughput per replica, and latency as load grows.",
        panels,
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, board in (("inscale-overview", overview()), ("inscale-scaling", scaling())):
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(board, indent=2) + "\n")
        print(f"wrote {path.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
