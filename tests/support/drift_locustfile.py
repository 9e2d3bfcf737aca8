"""Locust traffic for tests/test_drift_e2e.py: a model's held-out rows, as they are or shifted.

    locust -f tests/support/drift_locustfile.py --headless -H URL -u 2 -r 2 -t 10s \\
        --samples MODEL_DIR/samples.npz --scale 0.5

Each request sends `--rows` rows drawn at random from `samples.npz` (`input`), multiplied by
`--scale`: 1.0 is the data the model's reference describes, 0.5 dims every pixel of digits,
a shift far past the drift alert's threshold. Only the status is checked: a shifted row gets
a wrong answer, which is the point. loadtests/locustfile.py (answers checked against labels)
stays the load test.
"""

from typing import Any

import numpy as np
from locust import FastHttpUser, constant_pacing, events, task
from locust.argument_parser import LocustArgumentParser


# Locust's add_listener is untyped (loadtests/locustfile.py has a mypy override for it).
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="a samples.npz with an `input` array")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every value by it")
    parser.add_argument("--model", default="digits", help="model to call")
    parser.add_argument("--rows", type=int, default=8, help="rows per request")


class DriftUser(FastHttpUser):
    # 50 requests a second per user at most: thousands of rows in a 20 s window without
    # taking the cores the server and Prometheus need.
    wait_time = constant_pacing(0.02)

    def on_start(self) -> None:
        options: Any = self.environment.parsed_options
        self.model = str(options.model)
        self.count = int(options.rows)
        self.data = np.load(options.samples)["input"].astype(np.float64) * options.scale
        self.rng = np.random.default_rng()

    @task
    def predict(self) -> None:
        picked = self.rng.integers(0, len(self.data), self.count)
        rows = self.data[picked].tolist()
        with self.client.post(
            "/predict", json={"model": self.model, "inputs": rows}, catch_response=True
        ) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
