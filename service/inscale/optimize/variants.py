"""Making a variant of a model file, each with the library that owns the step: ONNX Runtime
for graph optimization and int8 quantization (`onnxruntime.quantization`, after its own
pre-processing: shape inference and a basic graph pass), onnxconverter-common for fp16.

- `graph`: ORT's offline graph optimization at the extended level, saved to a file. Extended,
  not all: the all level adds layout changes made for this machine's CPU, which ORT documents
  as not portable to other hardware.
- `int8-dynamic`: weights stored as int8, activations quantized per run; needs no samples.
- `int8-static`: weights and activations int8 in QDQ form, activation ranges calibrated on
  the sample rows (MinMax); u8 activations and s8 weights, the pairing ORT recommends for x86.
- `fp16`: weights and compute in float16, inputs and outputs kept float32 so clients are
  unchanged; worth it on a GPU (on CPU, ORT runs most fp16 kernels by casting back).
"""

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inscale.errors import InscaleError
from inscale.models.config import RuntimeConfig
from inscale.models.session import session_options
from inscale.optimize.samples import Samples

VARIANTS = ("graph", "int8-dynamic", "int8-static", "fp16")
CALIBRATION_ROWS = 512  # enough for MinMax ranges; more only makes calibration slower
CALIBRATION_BATCH = 32


class VariantError(InscaleError):
    """A variant that cannot be made here (a missing library, no samples)."""


def requirement(kind: str, samples: Samples | None) -> str | None:
    """Why `kind` cannot be made here, or None."""
    if kind not in VARIANTS:
        return f"unknown variant {kind!r} (choose from {', '.join(VARIANTS)})"
    if kind != "graph" and importlib.util.find_spec("onnx") is None:
        return f"{kind} needs the onnx package: pip install 'inscale[optimize]'"
    if kind == "fp16" and importlib.util.find_spec("onnxconverter_common") is None:
        return "fp16 needs onnxconverter-common: pip install 'inscale[optimize]'"
    if kind == "int8-static" and samples is None:
        return (
            "int8-static calibrates on sample inputs: give --samples FILE, or put "
            "samples.npz in the model folder"
        )
    return None


def make(kind: str, source: Path, target: Path, samples: Samples | None, work: Path) -> None:
    """Write variant `kind` of `source` to `target`; `work` is a scratch folder."""
    problem = requirement(kind, samples)
    if problem is not None:
        raise VariantError(problem)
    if kind == "graph":
        _graph(source, target)
    elif kind == "fp16":
        _fp16(source, target)
    else:
        import onnx
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = work / f"{kind}.pre.onnx"
        # ONNX's own shape inference and ORT's basic graph pass; the symbolic shape inference
        # (for transformer graphs' dynamic dims, and a sympy dependency) is left out.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Tensors whose type ONNX's shape inference cannot give (outputs of ai.onnx.ml ops,
        # such as the Scaler skl2onnx puts first) are float, as those ops' are.
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if kind == "int8-dynamic":
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, extra_options=extra)
        else:
            assert samples is not None
            quantize_static(
                prepared,
                target,
                _calibration(samples),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # The operators that hold the compute; the rest (softmax, argmax, the ml
                # ops) stay float, where ORT's QDQ pass cannot place pairs around some of
                # them (a graph output produced by an activation, as in skl2onnx's MLPs).
                op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                extra_options=extra,
            )


def _graph(source: Path, target: Path) -> None:
    options = session_options(RuntimeConfig(graph_optimization_level="extended"))
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])


def _fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(target))


def _calibration(samples: Samples) -> object:
    """The sample rows in batches, as `quantize_static` reads them (its CalibrationDataReader:
    `get_next` until it returns None)."""
    from onnxruntime.quantization import CalibrationDataReader

    rows = min(samples.rows, CALIBRATION_ROWS)
    batches: Iterator[dict[str, np.ndarray]] = (
        samples.batch(start, min(CALIBRATION_BATCH, rows - start))
        for start in range(0, rows, CALIBRATION_BATCH)
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    return Reader()
