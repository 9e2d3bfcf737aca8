"""JSON for every protocol: parsing a body's object, values (nested lists) to numpy arrays of a
declared dtype, and documents with arrays back to bytes.

The conversion is one `numpy.array` call plus a check of the element kind: no per-element
Python work, and no silent truncation (1.5 for an integer input is an error, not 1).
"""

import json
import math
from typing import Any

import numpy as np
import orjson

from inscale.errors import InvalidInput

# Which JSON-derived element kinds each target kind accepts: numbers widen to floats,
# integers stay integers, booleans and strings only match themselves.
_ACCEPTS = {
    "f": frozenset("fiu"),
    "i": frozenset("iu"),
    "u": frozenset("iu"),
    "b": frozenset("b"),
    "O": frozenset("U"),
}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans", "O": "strings"}
# numpy makes an object array of anything it cannot type: null, objects, mixed values.
_GOT_WORDS = {**_KIND_WORDS, "U": "strings", "O": "null, objects or mixed values"}


def parse_object(
    text: bytes, what: str, expected: str = "a JSON object", *, nan_words: bool = False
) -> dict[str, Any]:
    """A JSON object from a body (or a body's JSON header); `what` names it in messages.

    `nan_words`: also read bare NaN and Infinity, which strict JSON has not.
    """
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # Checked only here: testing every body for blankness first would copy it.
        if not text or text.isspace():
            raise InvalidInput(f"{what} is empty; {expected} is expected") from None
        # Triton's JSON, and perf_analyzer's, writes NaN and Infinity as bare words; the
        # standard library reads them (slower, so only when orjson could not).
        if not nan_words or (b"NaN" not in text and b"Infinity" not in text):
            raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
        try:
            document = json.loads(text)
            # What the standard library reads but orjson (the fast path) refuses: lone
            # surrogates (`"\ud800"`) and integers past 64 bits. Let through, they make
            # every later orjson.dumps (error messages, the response) fail with a 500.
            orjson.dumps(document)
        except (ValueError, TypeError, RecursionError):  # RecursionError: deep nesting
            raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput(f"{what} must be {expected}")
    return document


def to_array(name: str, data: object, dtype: np.dtype) -> np.ndarray:
    """Convert one input's JSON value; errors name the input and what was wrong."""
    try:
        array = np.array(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{name}': rows differ in length or mix types") from exc
    if array.dtype == dtype:
        return array
    kind = "O" if dtype.kind == "O" else dtype.kind
    if array.dtype.kind not in _ACCEPTS[kind]:
        if array.size == 0:
            return array.astype(dtype)
        if kind in "iu" and array.dtype.kind in "fO":
            # numpy reads integers past int64 as float64 or objects when they share a list
            # with others ([1, 2**63]); they are exact integers all the same.
            return _exact_integers(name, data, dtype, array)
        got = _GOT_WORDS.get(array.dtype.kind, "mixed or nested values")
        raise InvalidInput(f"input '{name}': expected {_KIND_WORDS[kind]}, got {got}")
    if kind in "iu":
        _check_range(name, array, dtype)
        return array.astype(dtype)
    if _fits(array, dtype):
        return array.astype(dtype)
    try:
        # A finite number too large for the dtype (1e300 for FP32) would become infinity.
        with np.errstate(over="raise"):
            return array.astype(dtype)
    except FloatingPointError:
        raise InvalidInput(f"input '{name}': values outside the range of {dtype}") from None


# The square of each narrower float type's largest finite value (see `_fits`).
_MAX_SQUARED = {np.dtype(t): float(np.finfo(t).max) ** 2 for t in (np.float16, np.float32)}
# The square of the largest magnitude of the integer arrays JSON makes.
_INT_SQUARED = {np.dtype(np.int64): 2.0**126, np.dtype(np.uint64): 2.0**128}


def _fits(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether casting `array` (float64 or 64-bit integers, as JSON makes them) to the float
    `dtype` surely turns no finite value into infinity: one C call where `np.errstate` costs
    a request about 2 us. The sum of squares bounds every square, so it is at most the
    largest finite value squared only if every value is within range. False (NaN, infinity,
    a value near the edge, a float16 model given large integers) leaves it to the exact check.
    """
    limit = _MAX_SQUARED.get(dtype)
    if limit is None:
        return False
    if array.dtype.kind == "f":
        return bool(np.vdot(array, array) <= limit)
    return _INT_SQUARED.get(array.dtype, math.inf) <= limit


def _check_range(name: str, array: np.ndarray, dtype: np.dtype) -> None:
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InvalidInput(f"input '{name}': values outside the range of {dtype}")


def _exact_integers(name: str, data: object, dtype: np.dtype, array: np.ndarray) -> np.ndarray:
    values = np.array(data, dtype=object)
    if values.shape != array.shape or not all(type(v) is int for v in values.flat):
        got = _GOT_WORDS.get(array.dtype.kind, "mixed or nested values")
        raise InvalidInput(f"input '{name}': expected {_KIND_WORDS[dtype.kind]}, got {got}")
    info = np.iinfo(dtype)
    if any(v < info.min or v > info.max for v in values.flat):
        raise InvalidInput(f"input '{name}': values outside the range of {dtype}")
    return values.astype(dtype)


def _fallback(value: object) -> object:
    # orjson serialises C-contiguous arrays of common dtypes itself; the rest (float16,
    # strings, trimmed views) go through tolist.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(document: object) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)
