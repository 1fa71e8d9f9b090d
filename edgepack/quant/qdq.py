"""QDQ insertion: QuantizeLinear/DequantizeLinear placed by the target's policy, from calibrated ranges.

Activation x feeding a quantized op, weight W, bias b (ONNX Runtime form):

      x ──► Q(s_x, z_x) ──► DQ ──┐
    W_int8 ──────────────► DQ ───┼──► Conv ──► ...
    b_int32 (s = s_x*s_w) ─► DQ ─┘

TensorRT form: the same without the bias DQ (biases stay float), int8 activations with zero point 0,
and Q/DQ on Conv / ConvTranspose / Gemm / MatMul inputs and on the residual input of an Add that a
quantized Conv feeds, so TensorRT fuses Conv+Add. ONNX Runtime form: uint8 (or int8) activations,
also Add / Mul / Concat / pools, so ORT's QDQ fusions turn the graph into its integer kernels
(QLinearConv, QLinearAdd, ...); Relu before a Q with zero point at the range minimum is dropped by ORT.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack.calib.ranges import Ranges
from edgepack.graph import WEIGHTED_OPS, attr_int, const_array, node_label, weight_output_axis
from edgepack.passes.rewrite import new_initializer, remove_unused_initializers, set_input_constant
from edgepack.targets import Target

logger = logging.getLogger(__name__)

# ops ONNX Runtime's QDQ transformers turn into integer kernels (QLinearAdd, QLinearMul,
# QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu)
ORT_EXTRA_OPS = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "MaxPool", "Sigmoid", "LeakyRelu")
# ops whose Q/DQ ORT drops so that they run on the 8-bit tensor itself (DropQDQNodesRules, Split)
ORT_DATA_MOVEMENT = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
                     "Expand", "Tile", "Resize", "Split")
# an activation between a quantized op and its Q: ORT folds it into the Q (ReluQuantFusion, ClipQuantFusion)
FOLDED_INTO_Q = ("Relu", "Clip")
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclass(frozen=True)
class QuantPolicy:
    """What a target's runtime can fuse, as placement rules."""

    tensorrt: bool
    activation_dtype: str  # "uint8" or "int8"
    symmetric_activations: bool
    per_channel: bool
    int32_bias: bool
    ops: tuple[str, ...]
    bias_correction: bool = True
    weight_qmax: int = 127  # 63: 7-bit weights for CPUs whose int8 dot product saturates
    weight_dtype: str = "int8"  # "uint8": q + 128 with zero point 128 (ORT's exact U8U8 kernels)
    activation_qmax: int = 255  # 127: 7-bit unsigned activations (exact u7 x s8 on AVX2)

    @classmethod
    def for_target(cls, target: Target, *, per_tensor: bool = False, bias_correction: bool = True) -> "QuantPolicy":
        qdq = target.qdq
        per_channel = qdq.weight_per_channel and not per_tensor
        if target.is_tensorrt:
            return cls(True, "int8", True, per_channel, False, WEIGHTED_OPS, bias_correction)
        return cls(False, qdq.activation_dtype, qdq.activation_symmetric, per_channel, True,
                   WEIGHTED_OPS + ORT_EXTRA_OPS, bias_correction, qdq.weight_qmax, qdq.weight_dtype,
                   qdq.activation_qmax)


def tensors_to_calibrate(model: ir.Model, policy: QuantPolicy) -> set[str]:
    """Names of the tensors whose ranges `insert_qdq` can use under `policy`: inputs of the ops it
    quantizes (and of Add, for TensorRT's residual inputs), and Concat outputs (shared scales)."""
    ops = set(policy.ops) | {"Add"}
    names = set()
    for node in model.graph:
        if node.domain == "" and node.op_type in ops:
            names.update(v.name for v in node.inputs if v is not None and const_array(v) is None)
            if not policy.tensorrt:  # ONNX Runtime fuses only DQ -> op -> Q: every output is quantized
                names.update(_output_to_quantize(node).name for _ in [0] if node.outputs)
        if node.op_type == "Concat":
            names.add(node.outputs[0].name)
    return names


def _output_to_quantize(node: ir.Node) -> ir.Value:
    """The tensor whose Q makes `node` fusable: its output, or past a Relu/Clip that is its only
    consumer (ORT folds that activation into the Q's range)."""
    value = node.outputs[0]
    while True:
        uses = value.uses()
        if len(uses) != 1 or value.is_graph_output():
            return value
        user = uses[0].node
        if user.op_type not in FOLDED_INTO_Q or user.domain != "" or uses[0].idx != 0:
            return value
        value = user.outputs[0]


@dataclass
class QuantizeResult:
    model: ir.Model
    quantized: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node, why)


def activation_qparams(lo: float, hi: float, policy: QuantPolicy) -> tuple[float, int]:
    """Scale and zero point for a range; the range always includes 0 so that 0 is exact."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if policy.symmetric_activations:
        scale = max(abs(lo), abs(hi)) / 127.0
        return (scale if scale > 0 else 1.0), 0
    qmin, qmax = (0, policy.activation_qmax) if policy.activation_dtype == "uint8" else (-128, 127)
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0:
        return 1.0, 0 if policy.activation_dtype == "int8" else 0
    zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zero


def quantize_weight(w: np.ndarray, axis: int | None, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-qmax, qmax] (127, or 63 for 7-bit weights), per channel along `axis`
    (None: one scale)."""
    w = w.astype(np.float32)
    if axis is None:
        peak = float(np.abs(w).max()) if w.size else 0.0
        scale = np.array(peak / qmax if peak > 0 else 1.0, np.float32)
        return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8), scale
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    peak = np.abs(w).max(axis=reduce)
    # an all-zero channel gets scale 1, not a tiny one: its bias is quantized with x_scale * w_scale
    # and would saturate int32 (a pruned channel whose bias carries a constant)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8), scale


class _Inserter:
    def __init__(self, model: ir.Model, ranges: Ranges, policy: QuantPolicy):
        self.model, self.graph, self.ranges, self.policy = model, model.graph, ranges, policy
        self.dq_of: dict[ir.Value, ir.Value] = {}     # activation -> its DQ output
        self.scale_of: dict[ir.Value, float] = {}
        self.override: dict[str, tuple[float, float]] = {}
        self.source_of: dict[ir.Value, ir.Value] = {}  # DQ output -> the activation it stands for

    def activation(self, value: ir.Value, anchor: ir.Node) -> ir.Value | None:
        """The DQ(Q(value)) output for `value` (one pair per tensor), or None without a range."""
        if value in self.dq_of:
            return self.dq_of[value]
        if (value.name not in self.ranges and value.name not in self.override) or value.dtype not in FLOATS:
            return None
        lo, hi = self.override[value.name] if value.name in self.override else self.ranges[value.name]
        scale, zero = activation_qparams(lo, hi, self.policy)
        np_type = np.uint8 if self.policy.activation_dtype == "uint8" else np.int8
        s = new_initializer(self.graph, np.array(scale, np.float32), f"{value.name}_scale")
        z = new_initializer(self.graph, np.array(zero, np_type), f"{value.name}_zero_point")
        q = ir.node("QuantizeLinear", [value, s, z], name=f"{value.name}_QuantizeLinear")
        dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=f"{value.name}_DequantizeLinear")
        q.outputs[0].name, dq.outputs[0].name = f"{value.name}_quantized", f"{value.name}_dequantized"
        producer = value.producer()
        if producer is not None:
            self.graph.insert_after(producer, [q, dq])
        else:
            self.graph.insert_before(self.graph[0], [q, dq])
        dq.outputs[0].shape, dq.outputs[0].dtype = value.shape, value.dtype
        self.dq_of[value], self.scale_of[value] = dq.outputs[0], scale
        self.source_of[dq.outputs[0]] = value
        return dq.outputs[0]

    def weight(self, node: ir.Node, index: int, axis: int | None) -> tuple[ir.Value, np.ndarray]:
        w = const_array(node.inputs[index])
        q, scale = quantize_weight(w, axis, self.policy.weight_qmax)
        zero = np.zeros(scale.shape, np.int8)
        if self.policy.weight_dtype == "uint8":
            q, zero = (q.astype(np.int16) + 128).astype(np.uint8), np.full(scale.shape, 128, np.uint8)
        name = node.inputs[index].name
        qv = new_initializer(self.graph, q, f"{name}_quantized")
        sv = new_initializer(self.graph, scale, f"{name}_scale")
        zv = new_initializer(self.graph, zero, f"{name}_zero_point")
        attrs = {"axis": axis} if axis is not None else {}
        dq = ir.node("DequantizeLinear", [qv, sv, zv], attrs, name=f"{name}_DequantizeLinear")
        dq.outputs[0].name = f"{name}_dequantized"
        self.graph.insert_before(node, dq)
        dq.outputs[0].shape, dq.outputs[0].dtype = node.inputs[index].shape, ir.DataType.FLOAT
        node.replace_input_with(index, dq.outputs[0])
        return dq.outputs[0], scale

    def bias(self, node: ir.Node, x_scale: float, w_scale: np.ndarray) -> None:
        b = const_array(node.inputs[2]).astype(np.float64).reshape(-1)
        scale = (x_scale * np.broadcast_to(w_scale, b.shape)).astype(np.float32)
        if np.any(scale <= 0):
            return
        q = np.clip(np.round(b / scale), -(2**31 - 1), 2**31 - 1).astype(np.int32)
        if np.all(scale == scale.reshape(-1)[0]):  # per-tensor weights: one scale, no axis (opset < 13)
            scale = np.array(scale.reshape(-1)[0], np.float32)
        name = node.inputs[2].name
        qv = new_initializer(self.graph, q, f"{name}_quantized")
        sv = new_initializer(self.graph, scale, f"{name}_scale")
        zv = new_initializer(self.graph, np.zeros(scale.shape, np.int32), f"{name}_zero_point")
        dq = ir.node("DequantizeLinear", [qv, sv, zv], {"axis": 0} if scale.ndim else {},
                     name=f"{name}_DequantizeLinear")
        dq.outputs[0].name = f"{name}_dequantized"
        self.graph.insert_before(node, dq)
        dq.outputs[0].shape, dq.outputs[0].dtype = ir.Shape(b.shape), ir.DataType.FLOAT
        node.replace_input_with(2, dq.outputs[0])


def insert_qdq(model: ir.Model, ranges: Ranges, policy: QuantPolicy, *, exclude: set[str] = frozenset(),
               float_defaults: bool = True) -> QuantizeResult:
    """Rewrites `model` in place with Q/DQ around the nodes the policy quantizes.

    `float_defaults`: keep the nodes of quant/float_rules.py float (norms, masks, attention
    scores, detection-head outputs); False quantizes everything the policy allows."""
    from edgepack import io
    from edgepack.quant.float_rules import default_float_nodes, exact_ranges

    io.infer_shapes(model)
    result = QuantizeResult(model)
    ins = _Inserter(model, ranges, policy)
    floats = default_float_nodes(model, policy, ranges) if float_defaults else {}
    if float_defaults:
        ins.override.update({k: v for k, v in exact_ranges(model).items() if k in ranges})
    result.skipped += [(node_label(n), why) for n, why in floats.items()]
    nodes = [n for n in model.graph if n.domain == "" and n.op_type in policy.ops and n not in floats]
    if not policy.tensorrt:
        islands = _integer_islands(nodes, exclude)
        result.skipped += [(node_label(n), why) for n, why in islands.items()]
        nodes = [n for n in nodes if n not in islands]
    if policy.tensorrt:  # ORT's QLinearConcat requantizes each input: no shared scale needed
        _share_concat_ranges(nodes, ranges, ins)
    _pass_ranges_through(model.graph, ranges, ins)
    for node in nodes:
        label = node_label(node)
        if label in exclude or node.op_type in exclude or (node.name and node.name in exclude):
            result.skipped.append((label, "excluded"))
            continue
        if policy.tensorrt and node.op_type == "Add":
            continue  # handled with the Conv that feeds it, below
        why = _quantize_node(node, ins, policy)
        if why:
            result.skipped.append((label, why))
            logger.warning("%s '%s' stays float: %s", node.op_type, label, why)
        else:
            result.quantized.append(label)
    if policy.tensorrt:
        _residual_adds(model.graph, ins, set(result.quantized))
    else:
        _quantize_outputs(model.graph, ins, set(result.quantized))
        _quantize_data_movement(model.graph, ins)
    remove_unused_initializers(model.graph)
    if not policy.tensorrt and policy.activation_dtype == "uint8":  # what check-qdq reads
        from edgepack.quant.origin import ACTIVATION_QMAX

        model.metadata_props[ACTIVATION_QMAX] = str(policy.activation_qmax)
    return result


def _integer_islands(nodes: list[ir.Node], exclude) -> dict[ir.Node, str]:
    """ONNX Runtime: activation-only ops (Add, Mul, Concat, pools, Sigmoid) none of whose consumers
    runs in INT8. Quantized, each would need a Q after it and a DQ before its float consumers:
    more work than the float op, and one more rounding. Removed until none is left (a chain of them
    ending in float goes as a whole); weighted ops always stay, since their integer kernel is the gain.

        Conv ─► Q/DQ ─► Concat ─► Mul(·, const) ─► ...   Concat stays float: its only consumer is float
    """
    def excluded(n: ir.Node) -> bool:
        return node_label(n) in exclude or n.op_type in exclude or bool(n.name and n.name in exclude)

    int8 = {n for n in nodes if not excluded(n)}
    islands: dict[ir.Node, str] = {}
    changed = True
    while changed:
        changed = False
        for node in list(int8):
            if node.op_type in WEIGHTED_OPS:
                continue
            if not any(c in int8 for c in _consumers_through_data_movement(node)):
                int8.discard(node)
                islands[node] = "no INT8 consumer: as INT8 it would add a Q and a DQ to a float op"
                changed = True
    return islands


def _consumers_through_data_movement(node: ir.Node) -> list[ir.Node]:
    """The nodes that read `node`'s outputs, looking through Relu/Clip and data movement ops."""
    found, frontier, seen = [], list(node.outputs), set()
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        for use in value.uses():
            user = use.node
            if user.op_type in ORT_DATA_MOVEMENT + FOLDED_INTO_Q and user.op_type not in ("MaxPool",) and use.idx == 0:
                frontier.extend(user.outputs)
            else:
                found.append(user)
    return found


def _quantize_node(node: ir.Node, ins: _Inserter, policy: QuantPolicy) -> str | None:
    op = node.op_type
    if op in WEIGHTED_OPS:
        if op == "Gemm" and attr_int(node, "transA", 0):
            return "Gemm with transA"
        if op == "ConvTranspose" and attr_int(node, "group", 1) > 1:
            return "grouped ConvTranspose"
        x = node.inputs[0]
        w_const = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if x is None or x.dtype not in FLOATS:
            return "input is not float"
        if x.name not in ins.ranges:
            return f"no calibration range for '{x.name}'"
        if w_const is None:  # activation x activation (attention MatMul): both inputs as activations
            if op != "MatMul":
                return "weight is not a constant"
            if node.inputs[1].name not in ins.ranges:
                return f"no calibration range for '{node.inputs[1].name}'"
            node.replace_input_with(0, ins.activation(x, node))
            node.replace_input_with(1, ins.activation(node.inputs[1], node))
            return None
        if w_const.dtype != np.float32:
            return "weight is not float32"
        dq = ins.activation(x, node)
        node.replace_input_with(0, dq)
        axis = weight_output_axis(node, w_const.ndim) if policy.per_channel and w_const.ndim > 1 else None
        if policy.bias_correction:
            _correct_bias(node, ins, w_const, axis, x)
        _, w_scale = ins.weight(node, 1, axis)
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is not None
        if policy.int32_bias and has_bias and op in ("Conv", "Gemm"):
            b = const_array(node.inputs[2])
            n_out = w_const.shape[axis] if axis is not None else b.size
            if b.size == n_out or axis is None:
                ins.bias(node, ins.scale_of[x], w_scale)
        return None
    # activation-only ops (ONNX Runtime targets): every float input quantized, or none
    float_inputs = [(i, v) for i, v in enumerate(node.inputs) if v is not None and v.dtype in FLOATS
                    and const_array(v) is None]
    if op in ("Add", "Mul") and len(float_inputs) != 2:
        return "needs two activation inputs"
    missing = [v.name for _, v in float_inputs if v.name not in ins.ranges]
    if missing or not float_inputs:
        return f"no calibration range for '{missing[0]}'" if missing else "no float input"
    for i, v in float_inputs:
        node.replace_input_with(i, ins.activation(v, node))
    return None


def _quantize_outputs(graph: ir.Graph, ins: _Inserter, quantized: set[str]) -> None:
    """ONNX Runtime: Q on the output of every quantized op whose consumers are float (or which
    is a graph output), so that DQ -> op -> Q fuses into the integer kernel. Without it ORT runs
    the op in float and dequantizes its constant weight at every inference.

        DQ ─► Conv ─► Relu ─► float op      becomes      DQ ─► Conv ─► Relu ─► Q ─► DQ ─► float op
                                                         (QLinearConv with its output in uint8)
    """
    for node in list(graph):
        if node_label(node) not in quantized or not node.outputs or node.outputs[0].dtype not in FLOATS:
            continue
        if node.op_type in ORT_DATA_MOVEMENT:
            continue
        if node.op_type in ("MatMul", "Gemm") and _is_weight(node.inputs[1]):
            continue  # MatMulIntegerToFloat / QGemm give a float output from integer math: no Q needed
        value = _output_to_quantize(node)
        if value in ins.dq_of or any(u.node.op_type == "QuantizeLinear" for u in value.uses()):
            continue
        _quantize_for_every_use(graph, ins, value)


def _is_weight(value: ir.Value | None) -> bool:
    """A constant, or the DQ of one."""
    if value is None:
        return False
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        value = producer.inputs[0]
    return const_array(value) is not None


def _quantize_data_movement(graph: ir.Graph, ins: _Inserter) -> None:
    """ONNX Runtime: data movement (Reshape, Transpose, Slice, MaxPool, Split, ...) between quantized
    tensors runs on the 8-bit tensor when it has DQ before and Q (same scale) after: ORT drops both.
    A chain such as ResNet's option-A shortcut (Slice -> Pad) stays 8-bit that way."""
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            if node.domain != "" or node.op_type not in ORT_DATA_MOVEMENT or not node.inputs:
                continue
            source = ins.source_of.get(node.inputs[0], node.inputs[0])
            if source is None or source not in ins.dq_of:
                continue
            if node.inputs[0] is not ins.dq_of[source]:
                node.replace_input_with(0, ins.dq_of[source])
            lo_hi = ins.override.get(source.name) or (ins.ranges[source.name] if source.name in ins.ranges else None)
            for out in node.outputs:
                if out in ins.dq_of or out.dtype not in FLOATS or lo_hi is None or not out.uses():
                    continue
                if all(u.node.op_type == "QuantizeLinear" for u in out.uses()):
                    continue
                ins.override[out.name] = lo_hi
                _quantize_for_every_use(graph, ins, out)
                changed = True


def _quantize_for_every_use(graph: ir.Graph, ins: _Inserter, value: ir.Value) -> None:
    """Q/DQ on `value`, every consumer (and a graph output) reading the DQ."""
    from edgepack.passes.rewrite import take_over_output

    uses = list(value.uses())
    was_output = value.is_graph_output()
    dq = ins.activation(value, None)
    if dq is None:
        return
    for use in uses:
        use.node.replace_input_with(use.idx, dq)
    if was_output:
        take_over_output(value, dq)
        # the Q still reads the producer's float tensor (now renamed)
        q = dq.producer().inputs[0].producer()
        if q is not None and q.inputs[0] is not value:
            q.replace_input_with(0, value)


def _correct_bias(node: ir.Node, ins: _Inserter, w: np.ndarray, axis: int | None, x: ir.Value) -> None:
    """Bias correction: quantizing W to W~ shifts the expected output by E = (W~ - W) E[x], per
    output channel; subtracting E from the bias removes the shift (Nagel et al. 2019, from the
    per-channel means of x that calibration recorded). Conv (any group) and Gemm (alpha = beta = 1)."""
    mean = ins.ranges.means.get(x.name)
    if mean is None:
        return
    mean = np.asarray(mean, np.float64)
    q, scale = quantize_weight(w, axis, ins.policy.weight_qmax)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    error = q.astype(np.float64) * np.asarray(scale, np.float64).reshape(shape) - w.astype(np.float64)
    if node.op_type == "Conv":
        m, per_group = error.shape[0], error.shape[1]
        groups = attr_int(node, "group", 1)
        if mean.size != per_group * groups or m % groups:
            return
        channel_mean = mean.reshape(groups, per_group)[np.arange(m) // (m // groups)]  # [M, C/g]
        shift = (error.reshape(m, per_group, -1).sum(axis=2) * channel_mean).sum(axis=1)
    elif node.op_type == "Gemm" and error.ndim == 2:
        alpha, beta = (node.attributes.get(k) for k in ("alpha", "beta"))
        if any(a is not None and float(a.value) != 1.0 for a in (alpha, beta)):
            return
        error = error if attr_int(node, "transB", 0) else error.T  # [N, K]
        if mean.size != error.shape[1]:
            return
        shift = error @ mean
    else:
        return
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = const_array(bias_value) if bias_value is not None else np.zeros(shift.shape, np.float32)
    if bias is None or bias.size not in (1, shift.size):
        return
    corrected = (np.broadcast_to(bias.reshape(-1), shift.shape) - shift).astype(np.float32)
    set_input_constant(ins.graph, node, 2, corrected, f"{bias_value.name if bias_value is not None else node_label(node)}_corrected")


# ops whose output values are a subset of their input's: the output keeps the input's scale
PASSTHROUGH_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _pass_ranges_through(graph: ir.Graph, ranges: Ranges, ins: _Inserter) -> None:
    """x -> MaxPool/Reshape/... -> y: y gets x's range, so DQ(s) -> MaxPool -> Q(s) has one scale and
    the runtime drops the pair (ORT runs MaxPool on uint8, TensorRT keeps the tensor in INT8)."""
    ops = PASSTHROUGH_OPS if ins.policy.tensorrt else ORT_DATA_MOVEMENT
    for node in graph:
        if node.op_type not in ops or node.domain != "" or not node.inputs or node.inputs[0] is None:
            continue
        source = node.inputs[0].name
        if source in ins.override or source in ranges:
            for out in node.outputs:  # Split: every output (ORT fuses it only with equal scales)
                ins.override[out.name] = ins.override.get(source) or ranges[source]


def _share_concat_ranges(nodes: list[ir.Node], ranges: Ranges, ins: _Inserter) -> None:
    """All inputs of a Concat (and its output) use one range, hence one scale."""
    for node in nodes:
        if node.op_type != "Concat":
            continue
        names = [v.name for v in (*node.inputs, node.outputs[0]) if v is not None and v.name in ranges]
        if names:
            lo = min(ranges[n][0] for n in names)
            hi = max(ranges[n][1] for n in names)
            for n in names:
                ins.override[n] = (lo, hi)


def _residual_adds(graph: ir.Graph, ins: _Inserter, quantized: set[str]) -> None:
    """TensorRT: Q/DQ on the skip input of Add(Conv(...), skip) so the Add fuses into the Conv."""
    for node in list(graph):
        if node.op_type != "Add" or len(node.inputs) != 2:
            continue
        producers = [v.producer() if v is not None else None for v in node.inputs]
        conv_side = [i for i, p in enumerate(producers) if p is not None and p.op_type == "Conv"
                     and node_label(p) in quantized]
        if len(conv_side) != 1:
            continue
        skip = node.inputs[1 - conv_side[0]]
        dq = ins.activation(skip, node)
        if dq is not None:
            node.replace_input_with(1 - conv_side[0], dq)
