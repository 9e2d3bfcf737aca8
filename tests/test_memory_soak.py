"""Resident memory under steady load does not trend upward: a 2-minute `loadtests.soak`.

The full soak (30 minutes, drift under 2%) is a measurement run by hand; this is its short
form for CI, through the tool's command line as a user would run it. On a shared 2-core
machine the request rate moves by tens of percent from run to run, but the memory a request
leaves behind does not, so the gate is the fitted slope of resident memory over the last
90 s (after 30 s of warm-up), not a drift between two single samples.

Measured on the 2026-12-01 machines (digits-wide, 32 connections), slope from 30 s to 120 s:
with the leak this guards against (every batch left a tuple on CPython's free lists, up to
~4 MB) +0.44 MB/min at 1,770 requests/s (sharing the server's core with another soak) and
0.55 to 0.9 MB/min at ~4,500/s alone, the rise scaling with the batches run; without it +0.01
to +0.13 MB/min (the last of the allocators warming up), under coverage too. Later the same
day, with the machine throttling, healthy runs read more: +0.17 to +0.25 MB/min alone for both
bdf177e and the commit after it (interleaved, with and without coverage), and +0.30 and +0.31
inside two full-suite runs at 2,500-3,100 requests/s. The limit sits between those and the
leak; it still catches the leak down to about 1,400 requests/s.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DURATION_S = 120
FROM_S = 30
MAX_SLOPE_MB_PER_MIN = 0.35
# Far below a quiet machine's ~4,500/s, far above nothing: proves the load really ran, on a
# CI machine busy with other work too.
MIN_REQUESTS_PER_S = 200

pytestmark = [
    pytest.mark.soak,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("wrk") is None, reason="needs wrk (scripts/dev test installs it)"
    ),
]


ATTEMPTS = 2


def soak(out: Path) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    cmd = [sys.executable, "-m", "loadtests.soak", "--duration-s", str(DURATION_S)]
    cmd += ["--from-s", str(FROM_S), "--sample-s", "5", "--connections", "32"]
    # The slope is the gate; the 30-minute drift limit means nothing over 90 s.
    cmd += ["--max-drift-pct", "100", "--max-slope-mb-per-min", str(MAX_SLOPE_MB_PER_MIN)]
    cmd += ["--min-requests-per-s", str(MIN_REQUESTS_PER_S), "--out", str(out)]
    if len(os.sched_getaffinity(0)) < 2:
        cmd.append("--no-pin")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DURATION_S + 80)
    assert out.exists(), f"the soak wrote no results:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    return result, done


@pytest.mark.timeout(ATTEMPTS * (DURATION_S + 90))
def test_resident_memory_has_no_upward_trend_under_steady_load(tmp_path: Path) -> None:
    # A slope over the limit is confirmed by a second soak before it fails the test: a leak
    # reads over it every time, while a healthy server inside a busy full-suite run read
    # 0.40 and 0.61 once each (and 0.23 to 0.34 alone in the same hour, like the code before
    # the change under test). Everything else must hold in the attempt that counts.
    slopes = []
    for attempt in range(1, ATTEMPTS + 1):
        result, done = soak(tmp_path / f"soak-{attempt}.json")
        slopes.append(result["trend"]["slope_mb_per_min"])
        if slopes[-1] <= MAX_SLOPE_MB_PER_MIN:
            break
    assert slopes[-1] <= MAX_SLOPE_MB_PER_MIN, f"slopes {slopes} MB/min:\n{done.stdout}"
    assert result["wrk"]["errors"] == 0, done.stdout
    # Served throughout, not only on average: every sample saw answers since the one before.
    rates = [s["answered_per_s"] for s in result["samples"]]
    assert len(rates) >= (DURATION_S - FROM_S) // 5, done.stdout
    assert all(r is not None and r > 0 for r in rates), rates
    assert result["passed"] and done.returncode == 0, done.stdout + done.stderr
