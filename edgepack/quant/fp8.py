"""FP8 (E4M3) Q/DQ for TensorRT targets whose GPU has FP8 (compute capability >= 8.9).

Placement is TensorRT's INT8 placement (quant/qdq.py: Q/DQ on the inputs of Conv / Gemm /
MatMul, residual Adds; norms, masks and scores float), calibrated the same way (minmax = amax,
percentile, mse); only the number format differs:

    activation x:  s = amax(x) / 448 (E4M3's largest finite value), zero point float8e4m3fn 0
    weight W:      s_c = max|W_c| / 448 per output channel, codes float8e4m3fn(W / s_c)

QuantizeLinear rounds to the nearest E4M3 value and saturates at ±448 (opset 19, saturate=1),
the arithmetic TensorRT specifies for FP8 Q/DQ; ONNX Runtime on the CPU runs the same QDQ math
with optimizations off, which is how its accuracy is measured here.
"""
from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array
from edgepack.passes.rewrite import new_initializer, remove_unused_initializers

logger = logging.getLogger(__name__)
E4M3_MAX = 448.0
FP8_OPSET = 19  # float8 types in QuantizeLinear / DequantizeLinear


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """Round to nearest E4M3 (saturating at ±448), as QuantizeLinear(saturate=1) does."""
    return np.clip(np.asarray(x, np.float32), -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)


def convert_int8_qdq_to_fp8(model: ir.Model, weights: dict[tuple[str, int], np.ndarray]) -> int:
    """Rewrite the symmetric INT8 Q/DQ that insert_qdq placed into FP8 E4M3, in place.

    `weights`: {(node name, input index): the float weight} recorded before insertion, so that
    weights are rounded once, from float, to E4M3. Returns the number of Q/DQ nodes converted."""
    graph = model.graph
    zero = None
    converted = 0
    rescaled: dict[ir.Value, ir.Value] = {}
    for node in list(graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain != "":
            continue
        src = const_array(node.inputs[0]) if node.op_type == "DequantizeLinear" else None
        if src is not None:
            continue  # weights: below, from the recorded float values
        scale = node.inputs[1]
        if scale not in rescaled:
            s = const_array(scale).astype(np.float64) * 127.0 / E4M3_MAX
            rescaled[scale] = new_initializer(graph, s.astype(np.float32), f"{scale.name}_fp8")
        if zero is None:
            zero = new_initializer(graph, np.array(0, ml_dtypes.float8_e4m3fn), "fp8_zero_point")
        node.replace_input_with(1, rescaled[scale])
        node.replace_input_with(2, zero)
        if node.op_type == "QuantizeLinear":
            node.outputs[0].dtype = ir.DataType.FLOAT8E4M3FN
        converted += 1
    for node in list(graph):
        for index, value in enumerate(node.inputs):
            key = (node.name, index)
            dq = value.producer() if value is not None else None
            if key not in weights or dq is None or dq.op_type != "DequantizeLinear":
                continue
            w = weights[key].astype(np.float64)
            axis = int(dq.attributes["axis"].value) if "axis" in dq.attributes else None
            if axis is None:
                s = np.array(max(np.abs(w).max(), 1e-12) / E4M3_MAX)
                shaped = s
            else:
                reduce = tuple(i for i in range(w.ndim) if i != axis)
                s = np.maximum(np.abs(w).max(axis=reduce), 1e-12) / E4M3_MAX
                shape = [1] * w.ndim
                shape[axis] = -1
                shaped = s.reshape(shape)
            name = value.name.removesuffix("_dequantized")
            dq.replace_input_with(0, new_initializer(graph, to_e4m3(w / shaped), f"{name}_fp8"))
            dq.replace_input_with(1, new_initializer(graph, s.astype(np.float32), f"{name}_fp8_scale"))
            dq.replace_input_with(2, new_initializer(graph, np.zeros(s.shape, ml_dtypes.float8_e4m3fn),
                                                     f"{name}_fp8_zero_point"))
            converted += 1
    remove_unused_initializers(graph)
    logger.info("fp8: %d Q/DQ nodes in E4M3", converted)
    return converted


def float_weights(model: ir.Model) -> dict[tuple[str, int], np.ndarray]:
    """{(node name, input index): weight} for the weights insert_qdq may quantize."""
    from edgepack.graph import WEIGHTED_OPS

    out = {}
    for node in model.graph:
        if node.op_type in WEIGHTED_OPS and len(node.inputs) > 1:
            w = const_array(node.inputs[1])
            if w is not None and w.dtype == np.float32:
                out[(node.name, 1)] = w
    return out
