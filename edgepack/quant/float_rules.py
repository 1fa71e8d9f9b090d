"""Which nodes stay float by default: the places where one INT8 scale per tensor loses accuracy
that no range method can win back.

Transformers (decoder LLMs, BERT-style encoders):
  - normalization: RMSNorm / LayerNorm, also written out (Pow, ReduceMean, Add eps, Sqrt, Div or
    Reciprocal+Mul, Mul gamma, Add beta): x / rms(x) spans the activation's whole dynamic range
    in one step, and the statistics are tiny numbers beside large ones;
  - attention scores before Softmax and masks: a mask carries -inf (or -1e4 .. float min) by
    design, and Softmax amplifies any error in the largest scores;
        q ─► MatMul ◄─ kᵀ ─► Mul 1/√d ─► Add ◄─ mask ─► Softmax        (Mul, Add: float)
  - activation x activation MatMul (QKᵀ, PV): INT8 with Q/DQ on both inputs on TensorRT (its
    fused attention kernels take it); float on ONNX Runtime CPU, where MatMulInteger with two
    runtime operands gains little time and costs accuracy (measured by
    scripts/bench/bench_quantize_models.py);
  - Softmax, Gather, norms are never quantized (not in any policy's op list).

Detectors (and any model whose last ops assemble several quantities into one output):
  - Concat of tensors of different scale: box offsets in pixels beside probabilities in 0..1,
    one scale for both rounds the probabilities away;
        reg [1,4,H,W] ──┐
        obj ─► Sigmoid ─┼─► Concat ─► Reshape ─► Concat(levels) ─► output   (Concats: float)
        cls ─► Sigmoid ─┘
  - the last activation ops before a graph output (through data movement only: Reshape,
    Transpose, Concat, Slice, Sigmoid, ...): a graph output is read by post-processing with
    thresholds, never by another quantized op, so quantizing it only adds error.

Each rule gives a reason that quantize reports next to the node (`float: <node> (<reason>)`).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack.graph import WEIGHTED_OPS, const_array

logger = logging.getLogger(__name__)

ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Cast", "Neg")
DATA_MOVEMENT = ("Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split",
                 "Identity", "Cast", "Gather", "Expand", "Tile")
MASK_PROPAGATING = DATA_MOVEMENT + ("Where", "Add", "Sub", "Mul", "Min", "Max", "Neg")
BOUNDED_OPS = ("Sigmoid", "Softmax", "LogSoftmax", "HardSigmoid", "Tanh")
# Q/DQ on both inputs of an activation x activation MatMul, per runtime (see the module docstring)
ACTIVATION_MATMUL_INT8 = {"tensorrt": True, "onnxruntime": False}
MASK_VALUE = -1e4  # constants at or below this (or -inf) are masks
CONCAT_SCALE_RATIO = 8.0  # a Concat whose inputs' ranges differ more than this stays float


def default_float_nodes(model: ir.Model, policy, ranges=None) -> dict[ir.Node, str]:
    """Nodes that stay float under `policy` by default, each with the reason."""
    graph = model.graph
    floats: dict[ir.Node, str] = {}

    def mark(node: ir.Node, why: str) -> None:
        floats.setdefault(node, why)

    for node in _normalization_nodes(graph):
        mark(node, "normalization (RMSNorm/LayerNorm) stays float")
    masks = _mask_values(graph)
    for node in graph:
        if node.op_type in ("Softmax", "LogSoftmax") and node.inputs and node.inputs[0] is not None:
            for producer in _elementwise_ancestors(node.inputs[0]):
                mark(producer, f"attention scores before {node.op_type} stay float")
        if any(v in masks for v in node.inputs if v is not None) and node.op_type not in DATA_MOVEMENT:
            mark(node, "takes a mask (-inf / large negative values)")
        if (node.op_type == "MatMul" and node.domain == "" and len(node.inputs) == 2
                and all(v is not None and const_array(v) is None for v in node.inputs)
                and not ACTIVATION_MATMUL_INT8["tensorrt" if policy.tensorrt else "onnxruntime"]):
            mark(node, "activation x activation MatMul (attention) stays float on ONNX Runtime CPU")
        if node.op_type == "Concat" and ranges is not None and (why := _mixed_scales(node, ranges)):
            mark(node, why)
    for node in _output_tail(graph):
        mark(node, "last op before a graph output stays float")
    for node in graph:  # shape arithmetic (Concat of int64 dims): nothing to quantize
        typed = [v for v in node.inputs if v is not None and v.dtype is not None]
        if typed and all(v.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) for v in typed):
            mark(node, "integer tensors (shape arithmetic)")
    return {n: why for n, why in floats.items() if n.domain == "" and n.op_type in policy.ops}


def exact_ranges(model: ir.Model) -> dict[str, tuple[float, float]]:
    """Tensors whose range is known exactly and must not be clipped by a range method: the
    outputs of Softmax and Sigmoid (probabilities in [0, 1]). Entropy and percentile calibration
    clip the rare large probabilities, which are the ones attention relies on."""
    return {n.outputs[0].name: (0.0, 1.0) for n in model.graph
            if n.op_type in ("Softmax", "Sigmoid") and n.domain == "" and n.outputs}


def _normalization_nodes(graph: ir.Graph) -> set[ir.Node]:
    """Nodes of written-out RMSNorm/LayerNorm: from a variance (ReduceMean of Pow(x, 2) or x*x),
    forward through the statistics (Add eps, Sqrt, Reciprocal, Pow) to the node that applies them
    to x (Div or Mul), then through Mul/Add/Sub/Div with constants (gamma, beta); plus the
    mean-centring Sub(x, ReduceMean(x)) of LayerNorm."""
    nodes: set[ir.Node] = set()
    for node in graph:
        if node.op_type != "ReduceMean" or not node.inputs or node.inputs[0] is None:
            continue
        src = node.inputs[0].producer()
        if src is not None and _is_square(src):
            nodes |= _norm_from_variance(node)
        for use in node.outputs[0].uses():  # LayerNorm: x - mean(x)
            user = use.node
            if user.op_type == "Sub" and user.inputs[0] is node.inputs[0]:
                nodes.add(user)
    return nodes


def _is_square(node: ir.Node) -> bool:
    if node.op_type == "Pow":
        e = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        return e is not None and e.size == 1 and float(e.reshape(-1)[0]) == 2.0
    return node.op_type == "Mul" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]


def _norm_from_variance(reduce: ir.Node) -> set[ir.Node]:
    nodes, stats = {reduce}, {reduce.outputs[0]}
    frontier = [reduce.outputs[0]]
    applied: list[ir.Value] = []
    while frontier:
        value = frontier.pop()
        for use in value.uses():
            node = use.node
            if node in nodes or node.op_type not in ELEMENTWISE:
                continue
            others = [v for v in node.inputs if v is not None and v not in stats]
            nodes.add(node)
            if all(const_array(v) is not None for v in others):  # still a statistic: eps, sqrt, 1/x
                stats.add(node.outputs[0])
                frontier.append(node.outputs[0])
            else:  # x / rms(x) or x * rsqrt(...)
                applied.append(node.outputs[0])
    while applied:  # gamma, beta
        value = applied.pop()
        for use in value.uses():
            node = use.node
            if (node not in nodes and node.op_type in ("Mul", "Add", "Sub", "Div")
                    and all(v is value or const_array(v) is not None for v in node.inputs if v is not None)):
                nodes.add(node)
                applied.append(node.outputs[0])
    return nodes


def _mask_values(graph: ir.Graph) -> set[ir.Value]:
    """Values that carry a mask: derived (by data movement, Where, Add, ...) from a constant
    holding -inf or values at or below MASK_VALUE."""
    masks: set[ir.Value] = set()
    for node in graph:
        if node.op_type == "Constant":
            continue
        inputs = [v for v in node.inputs if v is not None]
        carries = any(v in masks or _is_mask_constant(v) for v in inputs)
        if carries and node.op_type in MASK_PROPAGATING:
            masks.update(node.outputs)
    return masks


def _is_mask_constant(value: ir.Value) -> bool:
    array = const_array(value)
    if array is None or array.dtype.kind != "f" or array.size == 0:
        return False
    return bool(np.any(~np.isfinite(array)) or array.min() <= MASK_VALUE)


def _elementwise_ancestors(value: ir.Value) -> set[ir.Node]:
    """The elementwise nodes between `value` and the non-elementwise ops that feed it."""
    found, frontier = set(), [value]
    while frontier:
        producer = frontier.pop().producer()
        if producer is None or producer in found or producer.op_type not in ELEMENTWISE + ("Where",):
            continue
        found.add(producer)
        frontier.extend(v for v in producer.inputs if v is not None and const_array(v) is None)
    return found


def _output_tail(graph: ir.Graph) -> set[ir.Node]:
    """Activation-only nodes whose output reaches a graph output through data movement and
    bounded activations only (weighted ops keep their quantized inputs); the first other op on
    the way back (a decode's Mul, a residual Add) is included, what feeds it is not."""
    tail, frontier = set(), list(graph.outputs)
    seen: set[ir.Value] = set()
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        producer = value.producer()
        if producer is None or producer.op_type in WEIGHTED_OPS:
            continue
        tail.add(producer)  # the walk goes on through data movement only: not into residual chains
        if producer.op_type in DATA_MOVEMENT + BOUNDED_OPS:
            frontier.extend(v for v in producer.inputs if v is not None and const_array(v) is None)
    return tail


def _mixed_scales(node: ir.Node, ranges) -> str | None:
    """Why a Concat's inputs cannot share one scale, or None."""
    inputs = [v for v in node.inputs if v is not None]
    bounded = [v for v in inputs if v.producer() is not None and v.producer().op_type in BOUNDED_OPS]
    if bounded and len(bounded) < len(inputs):
        return "Concat mixes probabilities (Sigmoid/Softmax) with other quantities: stays float"
    spans = [max(abs(ranges[v.name][0]), abs(ranges[v.name][1])) for v in inputs if v.name in ranges]
    spans = [s for s in spans if s > 0]
    if len(spans) >= 2 and max(spans) / min(spans) > CONCAT_SCALE_RATIO:
        return (f"Concat mixes tensors of different scale (|x| up to {min(spans):.3g} and "
                f"{max(spans):.3g}): stays float")
    return None
