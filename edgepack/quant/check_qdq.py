"""check-qdq: does a QDQ model follow the target's rules? TensorRT's explicit quantization is strict."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array, iter_nodes, node_label
from edgepack.quant.qdq import QuantPolicy
from edgepack.targets import Target

QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
                 "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QGemm",
                 "QLinearSigmoid", "QLinearLeakyRelu", "DynamicQuantizeLinear", "MatMulIntegerToFloat"}


@dataclass(frozen=True)
class Finding:
    """One broken rule at one node; `rule` is the short text findings are grouped by."""

    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: {self.detail}"


def check_qdq(model: ir.Model, target: Target) -> list[str]:
    """Every rule the model breaks, as '<node>: <problem>' (empty list: the model is fine)."""
    return [str(f) for f in qdq_findings(model, target)]


def qdq_findings(model: ir.Model, target: Target) -> list[Finding]:
    """Every rule the model breaks, one Finding per node and rule."""
    from edgepack.quant.low_precision_rules import low_precision_findings
    from edgepack.quant.origin import seven_bit_activations

    policy = QuantPolicy.for_target(target)
    problems: list[Finding] = low_precision_findings(model, target)
    int8_weights_exact = seven_bit_activations(model)  # u7 x s8 pairs fit int16
    for node in iter_nodes(model):
        label = node_label(node)
        add = lambda rule, detail: problems.append(Finding(rule, label, detail))  # noqa: E731
        if node.op_type in QOPERATOR_OPS:
            add("QOperator op (use the QDQ form)", f"{node.op_type} is a QOperator op; use the QDQ form")
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        zero = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None:
            add("scale is not a constant", "scale is not a constant")
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            add("scale not finite and > 0", "scales must be finite and > 0")
        if "block_size" in node.attributes or _low_precision(node, zero):
            continue  # INT4 blocks and FP8: quant/low_precision_rules.py
        _check_axis(node, label, scale, problems)
        if policy.tensorrt:
            if zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
                add("zero point not int8 0 (TensorRT)",
                    f"TensorRT needs int8 zero points equal to 0 "
                    f"(got {zero.dtype}, max |z| {int(np.abs(zero.astype(np.int64)).max())})")
            if zero is None and node.op_type == "QuantizeLinear":
                add("no zero point: uint8 (TensorRT needs int8)",
                    "no zero point: ONNX then means uint8, TensorRT needs int8")
            src = const_array(node.inputs[0]) if node.op_type == "DequantizeLinear" else None
            if src is not None and src.dtype != np.int8:
                add(f"dequantizes {src.dtype} (TensorRT takes int8 only)",
                    f"dequantizes {src.dtype}; TensorRT takes int8 only (keep biases float)")
        if target.int8_saturates and not int8_weights_exact and node.op_type == "DequantizeLinear":
            src = const_array(node.inputs[0])
            if src is not None and src.dtype == np.int8 and int(np.abs(src.astype(np.int16)).max(initial=0)) > 64:
                add(f"int8 weights with 8-bit activations (saturate on {target.name})",
                    f"int8 weights on {target.name}, whose CPU adds u8 x s8 product pairs in int16 and "
                    "saturates; 7-bit activations, uint8 (U8U8) or 7-bit weights are exact there")
        if node.op_type == "QuantizeLinear":
            users = node.outputs[0].uses()
            if not users or any(u.node.op_type != "DequantizeLinear" for u in users):
                add("QuantizeLinear not followed by DequantizeLinear only",
                    "a QuantizeLinear must feed DequantizeLinear nodes only")
            if node.outputs[0].is_graph_output():
                add("quantized graph output", "a quantized tensor is a graph output")
    return problems


def _low_precision(node: ir.Node, zero: np.ndarray | None) -> bool:
    """An FP8 or INT4 Q/DQ (its rules are in low_precision_rules.py)."""
    from edgepack.quant.low_precision_rules import LOW_PRECISION_TYPES

    types = {v.dtype for v in (node.inputs[0], node.outputs[0]) if v is not None}
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        types.add(node.inputs[2].dtype)
    return bool(types & LOW_PRECISION_TYPES)


def grouped(findings: list[Finding]) -> list[tuple[str, int, str]]:
    """(rule, count, first node) per rule, most frequent first."""
    counts: dict[str, list[str]] = {}
    for f in findings:
        counts.setdefault(f.rule, []).append(f.node)
    return sorted(((rule, len(nodes), nodes[0]) for rule, nodes in counts.items()), key=lambda r: -r[1])


def _check_axis(node: ir.Node, label: str, scale: np.ndarray, problems: list[Finding]) -> None:
    if scale.ndim == 0 or scale.size == 1:
        return
    x = node.inputs[0]
    data = const_array(x)
    shape = data.shape if data is not None else (list(x.shape) if x.shape is not None else None)
    axis = node.attributes["axis"].value if "axis" in node.attributes else 1
    if shape is None:
        return
    if not -len(shape) <= axis < len(shape):
        problems.append(Finding("axis out of range", label, f"axis {axis} out of range for rank {len(shape)}"))
    elif isinstance(shape[axis], int) and shape[axis] != scale.size:
        problems.append(Finding("scale count != channels", label,
                                f"{scale.size} scales for {shape[axis]} channels on axis {axis}"))
