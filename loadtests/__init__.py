"""Benchmarks and load tests for inscale, run from the repository root as modules:

    .venv/bin/python -m loadtests.bench_batching --duration 5 --concurrency 1,32

Every tool is a short script over `loadtests.harness` (pinned servers, wrk, CPU accounting,
machine facts, ports, Prometheus). `locustfile.py` alone stands apart: Locust workers receive
only that one file, so it imports nothing from here.
"""
