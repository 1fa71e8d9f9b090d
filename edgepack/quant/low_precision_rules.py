"""check-qdq's rules for INT4 weights, FP8 Q/DQ and the opset window.

TensorRT: INT4 only as DequantizeLinear(block_size) of a constant int4 weight with zero point 0
(absent or all zero), block 64 or 128 (the target's int4_block_sizes) along one of the last two
axes, on a target whose precisions include int4; FP8 only E4M3 with zero point 0 on a GPU of
compute capability >= 8.9; no com.microsoft ops; the model's opset inside the parser's window.
ONNX Runtime: MatMulNBits with bits 4/8 and a block size the target lists; blocked DQ as the
ONNX standard defines it.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array, iter_nodes, node_label

INT4_TYPES = {ir.DataType.INT4, ir.DataType.UINT4}
FP8_TYPES = {ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2,
             ir.DataType.FLOAT8E5M2FNUZ}
LOW_PRECISION_TYPES = INT4_TYPES | FP8_TYPES


def low_precision_findings(model: ir.Model, target) -> list:
    from edgepack.quant.check_qdq import Finding
    from edgepack.quant.opset_window import opset_problem

    problems: list[Finding] = []
    why = opset_problem(model, target)
    if why:
        problems.append(Finding("opset outside the runtime's window", "model", why))
    for node in iter_nodes(model):
        label = node_label(node)
        add = lambda rule, detail: problems.append(Finding(rule, label, detail))  # noqa: E731
        if node.op_type == "MatMulNBits":
            _matmulnbits(node, target, add)
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain != "":
            continue
        zero = node.inputs[2] if len(node.inputs) > 2 else None
        types = {v.dtype for v in (node.inputs[0], node.outputs[0], zero) if v is not None}
        if types & INT4_TYPES or "block_size" in node.attributes:
            _int4(node, target, zero, add)
        if types & FP8_TYPES:
            _fp8(node, target, zero, types, add)
    return problems


def _matmulnbits(node, target, add) -> None:
    if target.is_tensorrt:
        add("MatMulNBits on TensorRT", "com.microsoft.MatMulNBits is an ONNX Runtime op; TensorRT takes "
            "INT4 as DequantizeLinear(block_size) -> MatMul")
        return
    if "int4" not in target.precisions:
        add("INT4 on a target without int4", f"INT4 weights, but {target.name} lists no int4")
    bits = node.attributes["bits"].value if "bits" in node.attributes else 4
    block = node.attributes["block_size"].value if "block_size" in node.attributes else None
    if bits not in (4, 8):
        add("MatMulNBits bits not 4/8", f"bits = {bits}; edgepack writes 4 or 8")
    if block not in target.int4_block_sizes:
        add("INT4 block size not legal", f"block_size {block}; {target.name} takes "
            f"{', '.join(map(str, target.int4_block_sizes))}")


def _int4(node, target, zero, add) -> None:
    if "int4" not in target.precisions:
        add("INT4 on a target without int4", f"INT4 weights, but {target.name} cannot take them: "
            f"{target.int4_problem()}")
        return
    block = node.attributes["block_size"].value if "block_size" in node.attributes else None
    data = const_array(node.inputs[0]) if node.op_type == "DequantizeLinear" else None
    if node.op_type == "QuantizeLinear" or data is None:
        add("INT4 activations", "INT4 Q/DQ on an activation: INT4 is for constant weights only")
        return
    if target.is_tensorrt:
        if node.inputs[0].dtype != ir.DataType.INT4:
            add("uint4 on TensorRT", "TensorRT takes signed int4 codes [-8, 7] with zero point 0, not uint4")
        z = const_array(zero) if zero is not None else None
        if z is not None and np.any(z.astype(np.int64) != 0):
            add("INT4 zero point not 0 (TensorRT)", "TensorRT needs INT4 zero points equal to 0")
    if block is None:
        add("INT4 without blocks", "INT4 weights need per-block scales (DequantizeLinear block_size)")
        return
    if block not in target.int4_block_sizes:
        add("INT4 block size not legal", f"block_size {block}; {target.name} takes "
            f"{', '.join(map(str, target.int4_block_sizes))}"
            + (" (TensorRT's INT4 blocks are 64 or 128)" if target.is_tensorrt else ""))
    axis = node.attributes["axis"].value if "axis" in node.attributes else 1
    rank = data.ndim
    if target.is_tensorrt and axis % rank not in (rank - 2, rank - 1):
        add("INT4 block axis", f"blocks along axis {axis}; TensorRT blocks one of the last two axes")
    scale = const_array(node.inputs[1])
    if scale is not None:
        expected = list(data.shape)
        expected[axis % rank] = -(-data.shape[axis % rank] // block)
        if list(scale.shape) != expected:
            add("INT4 scale shape", f"scale shape {list(scale.shape)}, blocks of {block} need {expected}")


def _fp8(node, target, zero, types, add) -> None:
    if not target.fp8:
        cc = target.compute_capability
        add("FP8 on a target without FP8",
            f"FP8 Q/DQ, but {target.name} has no FP8 (compute capability {cc or 'n/a'}; FP8 needs 8.9+)"
            if target.is_tensorrt else f"FP8 Q/DQ, but {target.name} (ONNX Runtime CPU) has no FP8 kernels")
        return
    if types & FP8_TYPES - {ir.DataType.FLOAT8E4M3FN}:
        add("FP8 not E4M3FN", "TensorRT's FP8 is E4M3 (float8e4m3fn)")
    z = const_array(zero) if zero is not None else None
    if z is not None and np.any(z.astype(np.float32) != 0):
        add("FP8 zero point not 0", "FP8 zero points must be 0")
    if zero is None and node.op_type == "QuantizeLinear":
        add("FP8 Q without zero point", "a QuantizeLinear needs an E4M3 zero point to produce FP8")
