"""Locust scenarios for inscale: who sends what, and how load changes over time.

Users (pick with their class name on the command line; all three by default):
  PredictUser     POST /predict with JSON rows
  V2JsonUser      POST /v2/models/{model}/infer with JSON tensors
  V2BinaryUser    the same with binary tensors (what tritonclient sends by default)

Every answer is checked: the label must be the data set's label for the row sent. Failures
are classified so the CSV and HTML reports say why: `shed (503)`, `timeout (504)`,
`client error (4xx)`, `server error (5xx)`, `wrong answer`, `connection error`.

Load shapes (`--shape`): steady, ramp (steps up to --peak-users: find the knee), spike
(a burst to the peak from 10% of it), soak (70% of the peak for a long time). Headless:

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 \\
        --shape ramp --peak-users 64 --shape-seconds 120 --csv RUN/locust --html RUN/report.html

`--request-log PATH` also writes every request to a CSV (time, name, response time, users,
failure class): the exact figures `loadtests/report.py` groups by load level. It works in
distributed mode too (`--master` and `--worker`): workers send their rows to the master with
their stats reports and the master writes the file. `loadtests/run_load.py` wraps all this.
"""

import bisect
import csv
import json
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from locust import FastHttpUser, LoadTestShape, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

SAMPLE = json.loads(
    (
        Path(__file__).resolve().parent.parent / "service/inscale/bundled_models/sample_input.json"
    ).read_text()
)
ROWS: list[list[float]] = SAMPLE["inputs"]
LABELS: list[int] = SAMPLE["labels"]


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--model", default="digits-wide", help="model to call")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--shape", choices=["steady", "ramp", "spike", "soak"], default="steady")
    parser.add_argument("--peak-users", type=int, default=32, help="most concurrent users")
    parser.add_argument("--shape-seconds", type=float, default=60, help="length of the shape")
    parser.add_argument("--ramp-steps", type=int, default=8, help="steps of the ramp shape")
    parser.add_argument(
        "--request-log",
        default="",
        include_in_web_ui=False,
        help="CSV of every request: time, name, response_time_ms, users, failure",
    )


def classify(status: int, error: str = "") -> str:
    """A failure's class. The V2 routes answer a request whose deadline passed in the queue
    with 503 (Triton's mapping) where /predict answers 504: its message tells it apart."""
    if status == 503 and "timed out" in error:
        return "timeout (504)"
    if status == 503:
        return "shed (503)"
    if status == 504:
        return "timeout (504)"
    if 400 <= status < 500:
        return "client error (4xx)"
    if status >= 500:
        return "server error (5xx)"
    return "connection error" if status == 0 else f"unexpected status ({status})"


def error_text(response: Any) -> str:
    """The `error` of a JSON error body, or nothing (a connection error has no body)."""
    try:
        return str(response.json().get("error", ""))
    except (ValueError, AttributeError, TypeError):
        return ""


class _InscaleUser(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model: str = options.model if options else "digits-wide"
        self.rows: int = options.rows if options else 1
        self._next = 0

    def pick(self) -> tuple[list[list[float]], list[int]]:
        """The next `rows` rows of the data set, round robin, with their labels."""
        picked = [(self._next + i) % len(ROWS) for i in range(self.rows)]
        self._next = (self._next + self.rows) % len(ROWS)
        return [ROWS[i] for i in picked], [LABELS[i] for i in picked]

    def check(self, response: Any, labels: list[int], got: list[int] | None) -> None:
        if response.status_code != 200:
            response.failure(classify(response.status_code, error_text(response)))
        elif got != labels:
            response.failure("wrong answer")
        else:
            response.success()


class PredictUser(_InscaleUser):
    @task
    def predict(self) -> None:
        rows, labels = self.pick()
        with self.client.post(
            "/predict",
            json={"model": self.model, "inputs": rows},
            catch_response=True,
            name="/predict",
        ) as response:
            got = response.json()["outputs"]["label"] if response.status_code == 200 else None
            self.check(response, labels, got)


class V2JsonUser(_InscaleUser):
    @task
    def infer(self) -> None:
        rows, labels = self.pick()
        body = {
            "inputs": [
                {"name": "input", "shape": [len(rows), 64], "datatype": "FP32", "data": rows}
            ],
            "outputs": [{"name": "label"}],
        }
        with self.client.post(
            f"/v2/models/{self.model}/infer",
            json=body,
            catch_response=True,
            name="/v2/models/{model}/infer [json]",
        ) as response:
            got = None
            if response.status_code == 200:
                got = [int(v) for v in response.json()["outputs"][0]["data"]]
            self.check(response, labels, got)


class V2BinaryUser(_InscaleUser):
    @task
    def infer(self) -> None:
        rows, labels = self.pick()
        raw = np.asarray(rows, dtype="<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [len(rows), 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
            }
        ).encode()
        with self.client.post(
            f"/v2/models/{self.model}/infer",
            data=header + raw,  # type: ignore[arg-type]  # Locust types it str, sends bytes
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
            catch_response=True,
            name="/v2/models/{model}/infer [binary]",
        ) as response:
            got = None
            if response.status_code == 200:
                json_length = int(response.headers["Inference-Header-Content-Length"])
                payload = response.content[json_length:]
                got = list(struct.unpack(f"<{len(payload) // 8}q", payload))
            self.check(response, labels, got)


class SelectableShape(LoadTestShape):
    """One shape class whose behaviour `--shape` picks, so every scenario is one flag away."""

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        if options is None:
            return None
        users = shape_users(
            options.shape,
            self.get_run_time(),
            options.peak_users,
            options.shape_seconds,
            options.ramp_steps,
        )
        if users is None:
            return None
        return users, max(1.0, options.peak_users / 2)  # reach each level within ~2 s


def shape_users(shape: str, elapsed: float, peak: int, seconds: float, steps: int) -> int | None:
    """Users wanted at `elapsed` seconds into a shape, or None once the shape is over."""
    if elapsed >= seconds:
        return None
    if shape == "steady":
        return peak
    if shape == "soak":
        return max(1, round(peak * 0.7))
    if shape == "ramp":
        step = min(steps, math.floor(elapsed / (seconds / steps)) + 1)
        return max(1, round(peak * step / steps))
    # spike: a tenth of the peak, the peak for the middle fifth, then back down.
    burst = 0.4 * seconds <= elapsed < 0.6 * seconds
    return peak if burst else max(1, round(peak / 10))


@events.test_start.add_listener
def _announce(environment: Environment, **_: object) -> None:
    options = environment.parsed_options
    if options is not None:
        print(
            f"inscale load test: shape={options.shape} peak={options.peak_users} "
            f"seconds={options.shape_seconds} model={options.model} rows={options.rows}"
        )


Row = tuple[float, str, float, str]  # completion time (epoch s), name, response ms, failure


class RequestLog:
    """Every request of the run, one CSV row each, written as they come (a soak stays small
    in memory). Locust's own CSVs hold aggregates over the whole run or a sliding window;
    percentiles per load level need every response time. `users_at` gives the users the
    shape asked for at a time (the offered load; spawning the difference takes under a
    second): the runner's target on a local run, a timeline of it on a master."""

    def __init__(self, path: Path, users_at: Callable[[float], int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["time", "name", "response_time_ms", "users", "failure"])
        self._users_at = users_at

    def write(self, rows: list[Row]) -> None:
        for when, name, response_ms, failure in rows:
            users = self._users_at(when)
            self._writer.writerow([f"{when:.4f}", name, f"{response_ms:.3f}", users, failure])

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def request_row(name: str, response_time: float, exception: BaseException | None) -> Row:
    # A failure marked with response.failure("shed (503)") arrives as CatchResponseError
    # whose text is the class; anything else (a connection reset) keeps its own text.
    return (time.time(), name, response_time, "" if exception is None else str(exception))


class UserTimeline:
    """The master's target user count, sampled ten times a second: worker rows arrive seconds
    late (with the stats reports), so they are stamped with the target at their own time."""

    def __init__(self, environment: Environment) -> None:
        self._environment = environment
        self._times: list[float] = []
        self._users: list[int] = []

    def sample_forever(self) -> None:
        while True:
            runner = self._environment.runner
            self._times.append(time.time())
            self._users.append(runner.target_user_count if runner else 0)
            gevent.sleep(0.1)

    def users_at(self, when: float) -> int:
        index = bisect.bisect_right(self._times, when) - 1
        return self._users[index] if index >= 0 else 0


@events.init.add_listener
def _request_log(environment: Environment, **_: object) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        _forward_rows(environment)
        return
    options = environment.parsed_options
    if runner is None or options is None or not options.request_log:
        return
    if isinstance(runner, MasterRunner):
        timeline = UserTimeline(environment)
        log = RequestLog(Path(options.request_log), timeline.users_at)
        gevent.spawn(timeline.sample_forever)

        @environment.events.worker_report.add_listener
        def _rows_from_worker(client_id: str, data: dict[str, Any]) -> None:
            rows = data.get("request_log", [])  # lists once serialised: make rows again
            log.write([(float(t), str(name), float(ms), str(f)) for t, name, ms, f in rows])

    else:
        log = RequestLog(Path(options.request_log), lambda _when: runner.target_user_count)

        @environment.events.request.add_listener
        def _row(
            name: str, response_time: float, exception: BaseException | None, **_: object
        ) -> None:
            log.write([request_row(name, response_time, exception)])

    # `quit` comes after the users have stopped and the workers' last reports are in.
    environment.events.quit.add_listener(lambda **_: log.close())


def _forward_rows(environment: Environment) -> None:
    """On a worker: keep rows until the next stats report, which carries them to the master.
    The option arrives with the master's first spawn message, so it is read per request."""
    pending: list[Row] = []

    @environment.events.request.add_listener
    def _row(name: str, response_time: float, exception: BaseException | None, **_: object) -> None:
        options = environment.parsed_options
        if options is not None and options.request_log:
            pending.append(request_row(name, response_time, exception))

    @environment.events.report_to_master.add_listener
    def _attach(client_id: str, data: dict[str, Any]) -> None:
        if pending:
            data["request_log"] = pending.copy()
            pending.clear()
