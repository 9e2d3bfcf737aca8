"""What each step of the /predict path costs in-process, per request, in microseconds.

The issue asks that validation, metrics hooks and deadlines cost no more than a few percent
of a request; this prints each step next to the end-to-end cost that `bench_batching.py`
measures for the same request (pass it with --end-to-end-us), and writes JSON.

    .venv/bin/python loadtests/bench_request_path.py --end-to-end-us 210
"""

import argparse
import asyncio
import heapq
import itertools
import json
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from inscale.datatypes import BY_NAME
from inscale.protocols.predict import codec as predict_codec
from inscale.settings import BUNDLED_REPOSITORY
from inscale.signature import Signature, TensorSpec
from inscale.validation import InputRules, count_rows

ROW = json.loads((BUNDLED_REPOSITORY / "sample_input.json").read_text())["inputs"][0]
BODY = orjson.dumps({"model": "digits-wide", "inputs": [ROW]})
SIGNATURE = Signature(
    inputs=(TensorSpec("input", BY_NAME["FP32"], (None, 64), ("N", None)),),
    outputs=(TensorSpec("probabilities", BY_NAME["FP32"], (None, 10), ("N", None)),),
)
RULES = InputRules(SIGNATURE, batchable=True, max_rows=32, variable_axes={})


def per_call_us(fn: Callable[[], object], number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


async def deadline_timer_us() -> float:
    """What a timer per request cost: arming and cancelling one (the batcher did this until
    it kept deadlines in a heap; shown for comparison)."""
    loop = asyncio.get_running_loop()

    def arm_and_cancel() -> None:
        loop.call_at(loop.time() + 10, lambda: None).cancel()

    return per_call_us(arm_and_cancel)


async def deadline_heap_us() -> float:
    """A request's deadline as the batcher keeps it: one heap entry (the heap is compacted
    when it outgrows the queue, here every 64 entries)."""
    loop = asyncio.get_running_loop()
    heap: list[tuple[float, int, object]] = []
    count = itertools.count()

    def push() -> None:
        if len(heap) > 64:
            heap.clear()
        heapq.heappush(heap, (loop.time() + 10, next(count), heap))

    return per_call_us(push)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--end-to-end-us", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("results/bench_request_path.json"))
    args = parser.parse_args()
    parsed = predict_codec.parse_request(BODY)
    arrays = predict_codec.to_arrays(parsed.inputs, RULES)
    outputs = {"probabilities": np.random.default_rng(0).random((1, 10), dtype=np.float32)}
    steps = {
        "parse JSON body (orjson)": per_call_us(lambda: orjson.loads(BODY)),
        "parse + read request fields": per_call_us(lambda: predict_codec.parse_request(BODY)),
        "JSON rows -> float32 array": per_call_us(
            lambda: predict_codec.to_arrays(parsed.inputs, RULES)
        ),
        "validate against signature": per_call_us(lambda: count_rows(RULES, arrays)),
        "deadline (heap entry)": asyncio.run(deadline_heap_us()),
        "(a timer per request: arm + cancel)": asyncio.run(deadline_timer_us()),
        "encode response (orjson)": per_call_us(
            lambda: predict_codec.encode_response("digits-wide", 1, outputs)
        ),
    }
    print(f"{'step':32} {'us':>7} {'share':>7}")
    for name, micros in steps.items():
        share = f"{micros / args.end_to_end_us:7.1%}" if args.end_to_end_us else ""
        print(f"{name:32} {micros:7.2f} {share}")
    guarded = steps["validate against signature"] + steps["deadline (heap entry)"]
    if args.end_to_end_us:
        print(f"validation + deadline: {guarded:.2f} us = {guarded / args.end_to_end_us:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps_us": steps, "end_to_end_us": args.end_to_end_us}))


if __name__ == "__main__":
    main()
