"""FoldPrunedWeightsPass: physically remove channels that pruning left provably constant (mostly zero)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack import io
from edgepack.graph import attr_float, attr_int, attr_ints, attr_str, const_array
from edgepack.passes.disjoint_sets import DisjointSets
from edgepack.passes.rewrite import remove_unused_initializers, set_input_constant
from edgepack.passes.simplify import dropout_is_identity

logger = logging.getLogger(__name__)

UNARY = {
    "Relu": lambda c, n: np.maximum(c, 0),
    "LeakyRelu": lambda c, n: np.where(c >= 0, c, attr_float(n, "alpha", 0.01) * c),
    "Sigmoid": lambda c, n: 1 / (1 + np.exp(-c)),
    "Tanh": lambda c, n: np.tanh(c),
    "HardSigmoid": lambda c, n: np.clip(attr_float(n, "alpha", 0.2) * c + attr_float(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda c, n: c * np.clip(c / 6 + 0.5, 0, 1),
    "Elu": lambda c, n: np.where(c > 0, c, attr_float(n, "alpha", 1.0) * (np.exp(c) - 1)),
    "Neg": lambda c, n: -c,
    "Abs": lambda c, n: np.abs(c),
    "Erf": lambda c, n: _erf(c),
    "Gelu": lambda c, n: (0.5 * c * (1 + np.tanh(np.sqrt(2 / np.pi) * (c + 0.044715 * c**3)))
                          if attr_str(n, "approximate", "none") == "tanh" else 0.5 * c * (1 + _erf(c / np.sqrt(2)))),
    "Softplus": lambda c, n: np.logaddexp(0, c),
    "Exp": lambda c, n: np.exp(c),
    "Identity": lambda c, n: c,
    "Dropout": lambda c, n: c,
    "Clip": None,  # bounds from attributes or inputs: see _clip_bounds
}
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")
BINARY = ("Add", "Sub", "Mul", "Div")


@dataclass
class _Analysis:
    axis: dict = field(default_factory=dict)      # Value -> channel axis
    consts: dict = field(default_factory=dict)    # Value -> float64[C], NaN where not constant
    sets: DisjointSets = field(default_factory=DisjointSets)  # joined (Value, channel) pairs
    linked: set = field(default_factory=set)      # (Node, input index) that carry channels through
    blocked: set = field(default_factory=set)     # Values whose channels must all stay


class FoldPrunedWeightsPass(ir.passes.InPlacePass):
    """Removes output channels that are provably constant and shrinks every consumer to match.

    Conv(W[k]=0, b[k]) -> Relu -> Conv(:, k): channel k carries the constant Relu(b[k]) everywhere,
    so row k of the producer and column k of every consumer can go; a constant c != 0 moves into
    the consumer's bias (bias[m] += c * sum(W[m, k])), which is exact for Gemm, MatMul and Conv
    without padding. Channels are followed through elementwise ops (f applied to the constant),
    BatchNormalization, pools, Resize/Pad over space, depthwise Conv, Flatten/Reshape into a Gemm
    (channel k becomes features k*H*W ... k*H*W+H*W-1), Concat (with offsets) and Add/Sub/Mul/Div:
    tensors joined by such ops share each channel, and a channel goes only when it is constant in
    every tensor that shares it and every consumer can drop it. A grouped Conv drops the same
    number of channels in every group. Graph outputs, unknown ops and subgraphs keep theirs.
    """

    MAX_ROUNDS = 10

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # Removing channels can expose more (a shrunk consumer's own rows become provably
        # constant): repeat until nothing changes, so that a second run has nothing to do.
        rounds = 0
        while rounds < self.MAX_ROUNDS and self._round(model):
            rounds += 1
        return ir.passes.PassResult(model, modified=rounds > 0)

    @staticmethod
    def _round(model: ir.Model) -> bool:
        graph = model.graph
        io.infer_shapes(model)
        analysis = _analyse(graph)
        keep = _decide(graph, analysis)
        removed = {v: idx for v, idx in keep.items() if len(idx) < _channels(v, analysis)}
        if not removed:
            return False
        _apply(graph, analysis, keep)
        remove_unused_initializers(graph)
        count = sum(_channels(v, analysis) - len(idx) for v, idx in removed.items()
                    if not _is_linked_output(v, analysis))
        logger.info("removed %d channels from %d tensors", count, len(removed))
        return True


# ---------------------------------------------------------------- analysis
def _analyse(graph: ir.Graph) -> _Analysis:
    a = _Analysis()
    for node in graph:
        if node.domain != "" or not node.outputs:
            continue
        handler = _HANDLERS.get(node.op_type)
        if handler is not None:
            handler(node, a)
    return a


def _channel_dim(value: ir.Value, axis: int) -> int | None:
    if value is None or value.shape is None or axis >= len(value.shape):
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _start(a: _Analysis, value: ir.Value, axis: int, consts: np.ndarray) -> bool:
    """Register `value` as carrying channels along `axis` (needs a static channel count)."""
    if value.shape is None:
        return False
    axis = axis % len(value.shape)
    if _channel_dim(value, axis) != len(consts):
        return False
    a.axis[value], a.consts[value] = axis, consts.astype(np.float64)
    return True


def _carries(a: _Analysis, value: ir.Value | None, axis: int | None = None) -> bool:
    return value in a.axis and (axis is None or a.axis[value] == axis)


def _link(a: _Analysis, node: ir.Node, index: int, src: ir.Value, dst: ir.Value, mapping=None) -> None:
    """Channel k of `src` is channel mapping[k] of `dst` (identity by default)."""
    a.linked.add((node, index))
    n = len(a.consts[src])
    for k in range(n):
        targets = mapping(k) if mapping else (k,)
        for t in targets:
            a.sets.union((src, k), (dst, t))


def _weighted(node: ir.Node, a: _Analysis) -> None:
    """Conv (plain or depthwise), ConvTranspose, Gemm, MatMul: a weight row that is all zero makes
    a constant channel."""
    op, out = node.op_type, node.outputs[0]
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or (op == "MatMul" and w.ndim != 2) or (op == "Gemm" and attr_int(node, "transA", 0)):
        return
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if op == "Conv":
        groups = attr_int(node, "group", 1)
        if groups > 1 and _depthwise(node, a, w, bias, groups):
            return
        rows = w.reshape(w.shape[0], -1)  # grouped Conv: row m is still output channel m
        axis = 1
    elif op == "ConvTranspose":  # W[C, M, k...]: output channel m is W[:, m]
        if attr_int(node, "group", 1) != 1:
            return
        rows, axis = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1), 1
    elif op == "Gemm":
        rows, axis = (w if attr_int(node, "transB", 0) else w.T), 1
    else:  # MatMul: X[..., K] @ W[K, N]
        rows, axis = w.T, -1
    n = rows.shape[0]
    if bias is None:
        b = np.zeros(n)
    elif bias.size == 1 or bias.shape in ((n,), (1, n)):
        b = np.broadcast_to(bias.reshape(-1).astype(np.float64), (n,)) * (attr_float(node, "beta", 1.0) if op == "Gemm" else 1.0)
    else:
        return  # a bias that varies across rows (Gemm C of shape [M, N]) is not per channel
    consts = np.where(~rows.any(axis=1), b, np.nan)
    _start(a, out, axis, consts)


def _depthwise(node: ir.Node, a: _Analysis, w: np.ndarray, bias: np.ndarray | None, groups: int) -> bool:
    """Depthwise Conv (group = C, W[C*m, 1, k...]): output channels k*m .. k*m+m-1 read only input
    channel k, so they go together with it (the group count shrinks, m stays)."""
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x, 1) or w.shape[1] != 1 or w.shape[0] % groups or len(a.consts[x]) != groups:
        return False  # a grouped Conv mixes channels within a group: see _grouped
    mult = w.shape[0] // groups
    c = np.repeat(a.consts[x], mult)
    b = np.zeros(len(c)) if bias is None else bias.astype(np.float64)
    no_pad = not any(attr_ints(node, "pads", [0]) or [0]) and _auto_pad(node) in ("NOTSET", "VALID")
    through = c * w.reshape(len(c), -1).sum(axis=1) + b if no_pad else np.where(c == 0, b, np.nan)
    if _start(a, out, 1, np.where(c == 0, b, through)):
        _link(a, node, 0, x, out, mapping=lambda k: range(k * mult, (k + 1) * mult))
    return True


def _batchnorm(node: ir.Node, a: _Analysis) -> None:
    x, out = node.inputs[0], node.outputs[0]
    stats = [const_array(v) for v in node.inputs[1:5]]
    if not _carries(a, x, 1) or any(s is None for s in stats):
        return
    gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
    scale = gamma / np.sqrt(var + attr_float(node, "epsilon", 1e-5))
    if _start(a, out, 1, a.consts[x] * scale + beta - mean * scale):
        _link(a, node, 0, x, out)


def _unary(node: ir.Node, a: _Analysis) -> None:
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x) or (node.op_type == "Dropout" and not dropout_is_identity(node)):
        return
    if node.op_type == "Clip":
        bounds = _clip_bounds(node)
        if bounds is None:
            return
        consts = np.clip(a.consts[x], *bounds)
    else:
        with np.errstate(all="ignore"):
            consts = UNARY[node.op_type](a.consts[x], node)
    if _start(a, out, a.axis[x], consts):
        _link(a, node, 0, x, out)


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    """Clip's (min, max): attributes before opset 11, constant inputs after; None if not constant."""
    if "min" in node.attributes or "max" in node.attributes:
        return attr_float(node, "min", -np.inf), attr_float(node, "max", np.inf)
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = node.inputs[i] if i < len(node.inputs) else None
        c = None if v is None else const_array(v)
        if v is not None and (c is None or c.size != 1):
            return None
        bounds.append(default if c is None else float(c.reshape(-1)[0]))
    return bounds[0], bounds[1]


def _pool(node: ir.Node, a: _Analysis) -> None:
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x, 1) or len(node.outputs) > 1 and node.outputs[1].uses():
        return
    c, axis = a.consts[x], 1
    if node.op_type in ("ReduceMean", "ReduceMax"):
        axes = attr_ints(node, "axes") if len(node.inputs) < 2 else (
            None if const_array(node.inputs[1]) is None else const_array(node.inputs[1]).tolist())
        rank = len(x.shape)
        if not axes or any(ax % rank in (0, 1) for ax in axes):
            return  # reducing over all axes, the batch or the channels mixes channels
    elif node.op_type == "AveragePool" and attr_int(node, "count_include_pad", 0) and (
            any(attr_ints(node, "pads", [0]) or [0]) or _auto_pad(node) not in ("NOTSET", "VALID")):
        c = np.where(c == 0, 0.0, np.nan)  # padded zeros enter the average: only 0 stays constant
    if _start(a, out, axis, c):
        _link(a, node, 0, x, out)


def _resize(node: ir.Node, a: _Analysis) -> None:
    """Resize over space only (N and C unchanged): every output is a weighted mean of one
    channel's inputs (weights summing to 1), so a constant channel stays that constant."""
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x, 1) or attr_str(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
        return
    if "axes" in node.attributes or _channel_dim(out, 1) != len(a.consts[x]):
        return
    scales = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    sizes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if scales is not None and scales.size:
        if scales.size < 2 or scales[0] != 1 or scales[1] != 1:
            return
    elif sizes is None or sizes.size < 2 or sizes[1] != len(a.consts[x]) or sizes[0] != x.shape[0]:
        return  # sizes[0] must be the static batch (a dynamic batch has no constant sizes)
    c = a.consts[x]
    if attr_str(node, "mode", "nearest") not in ("nearest", "linear"):
        c = np.where(c == 0, 0.0, np.nan)  # cubic weights sum to 1 only up to rounding
    if _start(a, out, 1, c):
        _link(a, node, 0, x, out)


def _pad(node: ir.Node, a: _Analysis) -> None:
    """Pad over space (no padding of N or C): a zero channel padded with zeros stays zero."""
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x, 1) or x.shape is None or attr_str(node, "mode", "constant") != "constant":
        return
    if "pads" in node.attributes:  # before opset 11
        pads, value = np.array(attr_ints(node, "pads")), np.array([attr_float(node, "value", 0.0)])
    else:
        pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        value = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
    axes = node.inputs[3] if len(node.inputs) > 3 else None
    if pads is None or value is None or axes is not None or len(pads) != 2 * len(x.shape):
        return
    rank = len(x.shape)
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return
    c = a.consts[x]
    if _start(a, out, 1, np.where(c == float(value.reshape(-1)[0]), c, np.nan)):
        _link(a, node, 0, x, out)


def _flatten(node: ir.Node, a: _Analysis) -> None:
    """[N, C, H, W] -> [N, C*H*W]: channel k becomes features k*HW .. k*HW + HW - 1."""
    x, out = node.inputs[0], node.outputs[0]
    if not _carries(a, x, 1) or x.shape is None or out.shape is None or len(out.shape) != 2:
        return
    if node.op_type == "Flatten" and attr_int(node, "axis", 1) != 1:
        return
    spatial = list(x.shape)[2:]
    if not all(isinstance(d, int) for d in spatial):
        return
    hw = int(np.prod(spatial)) if spatial else 1
    features = len(a.consts[x]) * hw
    if node.op_type == "Reshape" and _reshape_feature_slot(node, out) is None:
        if not _is_batch_flatten_shape(node.inputs[1], x):
            return
        out.shape = ir.Shape([out.shape[0], features])  # [N, -1] of a [N, C, H, W] tensor
    if _channel_dim(out, 1) != features:
        return
    if _start(a, out, 1, np.repeat(a.consts[x], hw)):
        _link(a, node, 0, x, out, mapping=lambda k: range(k * hw, (k + 1) * hw))


def _binary(node: ir.Node, a: _Analysis) -> None:
    out = node.outputs[0]
    carriers = [v for v in node.inputs if _carries(a, v)]
    if not carriers or out.shape is None:
        return
    rank = len(out.shape)
    axis = a.axis[carriers[0]] + rank - len(carriers[0].shape)
    n = len(a.consts[carriers[0]])
    operands = []
    for i, v in enumerate(node.inputs):
        if _carries(a, v):
            if a.axis[v] + rank - len(v.shape) != axis or len(a.consts[v]) != n:
                return
            operands.append(a.consts[v])
            continue
        per_channel = _per_channel_constant(const_array(v), rank, axis, n)
        if per_channel is None or (node.op_type == "Div" and i == 0):
            return
        operands.append(per_channel)
    with np.errstate(all="ignore"):
        consts = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[node.op_type](*operands)
    if _start(a, out, axis, consts):
        for i, v in enumerate(node.inputs):
            if _carries(a, v):
                _link(a, node, i, v, out)


def _concat(node: ir.Node, a: _Analysis) -> None:
    out = node.outputs[0]
    if not node.inputs or not all(_carries(a, v) for v in node.inputs) or out.shape is None:
        return
    axis = a.axis[node.inputs[0]]
    if any(a.axis[v] != axis for v in node.inputs):
        return
    cat_axis = attr_int(node, "axis", 0) % len(out.shape)
    if cat_axis == axis:
        consts = np.concatenate([a.consts[v] for v in node.inputs])
        if _start(a, out, axis, consts):
            offset = 0
            for i, v in enumerate(node.inputs):
                _link(a, node, i, v, out, mapping=lambda k, o=offset: (k + o,))
                offset += len(a.consts[v])
        return
    stacked = np.stack([a.consts[v] for v in node.inputs]) if len({len(a.consts[v]) for v in node.inputs}) == 1 else None
    if stacked is None:
        return
    consts = np.where((stacked == stacked[0]).all(axis=0), stacked[0], np.nan)
    if _start(a, out, axis, consts):
        for i, v in enumerate(node.inputs):
            _link(a, node, i, v, out)


_HANDLERS = {
    "Conv": _weighted, "ConvTranspose": _weighted, "Gemm": _weighted, "MatMul": _weighted,
    "BatchNormalization": _batchnorm, "Resize": _resize, "Pad": _pad,
    "Flatten": _flatten, "Reshape": _flatten, "Concat": _concat,
    **{op: _unary for op in UNARY}, **{op: _pool for op in POOLS}, **{op: _binary for op in BINARY},
}


# ---------------------------------------------------------------- decision
def _absorbing(node: ir.Node, index: int, value: ir.Value, a: _Analysis) -> str | None:
    """'any' if `node` can drop channel k of its input `value` whatever the constant, 'zero' if
    only zero channels, None if it cannot drop channels at all."""
    if index != 0 or node.graph is not value.graph:
        return None
    op = node.op_type
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if op == "Shape" and a.axis[value] != 0 and _reads_only_batch_dim(node):
        return "any"
    if w is None:
        return None
    groups = attr_int(node, "group", 1) if op == "Conv" else 1
    if op == "Conv" and a.axis[value] == 1 and w.shape[1] * groups == len(a.consts[value]):
        padded = any(attr_ints(node, "pads", [0]) or [0]) or _auto_pad(node) not in ("NOTSET", "VALID")
        return "zero" if padded else "any"
    if op == "ConvTranspose" and attr_int(node, "group", 1) == 1 and a.axis[value] == 1 \
            and w.shape[0] == len(a.consts[value]):
        return "zero"  # a constant input reaches border outputs through fewer taps: only 0 is exact
    if op == "Gemm" and not attr_int(node, "transA", 0) and a.axis[value] == 1:
        return "any"
    if op == "MatMul" and w.ndim == 2 and a.axis[value] == len(value.shape) - 1:
        return "any"
    return None


def _decide(graph: ir.Graph, a: _Analysis) -> dict[ir.Value, np.ndarray]:
    """Which channels of each tensor stay."""
    bad_roots = set()
    for value, consts in a.consts.items():
        n = len(consts)
        limit = np.zeros(n, bool)  # channels that must stay because of this value's uses
        if value.is_graph_output() or value.graph is not graph:
            limit[:] = True
        for use in value.uses():
            node, index = use.node, use.idx
            if (node, index) in a.linked:
                continue
            mode = _absorbing(node, index, value, a)
            if mode is None:
                limit[:] = True
            elif mode == "zero":
                limit |= consts != 0
        limit |= np.isnan(consts)
        for k in np.flatnonzero(limit):
            bad_roots.add(a.sets.find((value, k)))
    keep = {v: np.array([a.sets.find((v, k)) in bad_roots for k in range(len(c))]) for v, c in a.consts.items()}
    # Never empty a tensor: keep a channel (and everything it is tied to) where all would go.
    # A grouped Conv keeps as many input (and output) channels in every group: keep more where
    # one group would lose more than another.
    grouped = [(n, v, attr_int(n, "group", 1)) for n in graph if n.op_type == "Conv" and n.domain == ""
               and attr_int(n, "group", 1) > 1 for v in (n.inputs[0], n.outputs[0])
               if v in a.consts and (n, 0) not in a.linked]
    changed = True
    while changed:
        changed = False
        for v, mask in keep.items():
            if not mask.any():
                bad_roots.add(a.sets.find((v, 0)))
                changed = True
        for _node, v, groups in grouped:
            per_group = keep[v].reshape(groups, -1)
            need = max(1, int(per_group.sum(axis=1).max()))
            for j, row in enumerate(per_group):
                for k in np.flatnonzero(~row)[: need - int(row.sum())]:
                    bad_roots.add(a.sets.find((v, j * per_group.shape[1] + k)))
                    changed = True
        if changed:
            keep = {v: np.array([a.sets.find((v, k)) in bad_roots for k in range(len(c))]) for v, c in a.consts.items()}
    return {v: np.flatnonzero(mask) for v, mask in keep.items()}


# ---------------------------------------------------------------- rewrite
def _apply(graph: ir.Graph, a: _Analysis, keep: dict[ir.Value, np.ndarray]) -> None:
    def removed(v):
        return v in keep and len(keep[v]) < len(a.consts[v])

    for node in list(graph):
        op = node.op_type
        out = node.outputs[0] if node.outputs else None
        x = node.inputs[0] if node.inputs else None
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and (removed(x) and (node, 0) not in a.linked or removed(out)):
            _shrink_weighted(graph, node, a, keep, x if removed(x) and (node, 0) not in a.linked else None,
                             out if removed(out) else None)
        elif op == "BatchNormalization" and removed(out):
            for i in range(1, 5):
                set_input_constant(graph, node, i, const_array(node.inputs[i])[keep[out]], f"{node.inputs[i].name}_folded")
        elif op in BINARY and removed(out):
            rank, axis = len(out.shape), a.axis[out]
            for i, v in enumerate(node.inputs):
                if (node, i) in a.linked:
                    continue
                c = const_array(v)
                slot = axis - (rank - c.ndim)
                if slot >= 0 and c.shape[slot] > 1:
                    set_input_constant(graph, node, i, np.take(c, keep[out], axis=slot), f"{v.name}_folded")
        elif op == "Reshape" and removed(out) and const_array(node.inputs[1]) is not None:
            shape = const_array(node.inputs[1]).copy()
            slot = _reshape_feature_slot(node, out)
            if shape[slot] != -1:
                shape[slot] = len(keep[out])
            set_input_constant(graph, node, 1, shape, f"{node.inputs[1].name}_folded")
    for v, idx in keep.items():
        if removed(v):
            dims = list(v.shape)
            dims[a.axis[v]] = len(idx)
            v.shape = ir.Shape(dims)


def _shrink_weighted(graph, node, a, keep, inp, out) -> None:
    """Drop removed input columns (moving their constants into the bias) and removed output rows."""
    op = node.op_type
    w = const_array(node.inputs[1]).copy()
    groups = attr_int(node, "group", 1) if op == "Conv" else 1
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = None if bias_value is None else const_array(bias_value).astype(np.float64).reshape(-1)
    scalar_bias = bias is not None and bias.size == 1
    if op == "Gemm":
        out_axis, in_axis = (0, 1) if attr_int(node, "transB", 0) else (1, 0)
    elif op in ("MatMul", "ConvTranspose"):
        out_axis, in_axis = 1, 0
    else:
        out_axis, in_axis = 0, 1
    n_out = w.shape[out_axis]
    delta = np.zeros(n_out)
    if inp is not None and groups == 1:
        dropped = np.setdiff1d(np.arange(w.shape[in_axis]), keep[inp])
        c = a.consts[inp][dropped]
        if np.any(c != 0):
            cols = np.take(w, dropped, axis=in_axis).astype(np.float64)
            if op == "Conv":  # bias[m] += sum_k c_k * sum(W[m, k])
                delta = cols.reshape(n_out, len(dropped), -1).sum(axis=2) @ c
            else:
                delta = c @ cols if in_axis == 0 else cols @ c
            if op == "Gemm":
                delta = delta * attr_float(node, "alpha", 1.0)
        w = np.take(w, keep[inp], axis=in_axis)
    elif inp is not None:  # grouped Conv: group j's rows read only group j's channels
        w, delta = _shrink_grouped_input(w, a.consts[inp], keep[inp], groups)
    if out is not None:
        rows = keep[out]
        w = np.take(w, rows, axis=out_axis)
        delta = delta[rows]
        if bias is not None and bias.size > 1:
            bias = bias[rows]
        if groups > 1 and (node, 0) in a.linked:  # depthwise: whole groups go (see _depthwise)
            node.attributes["group"] = ir.AttrInt64("group", groups * len(rows) // n_out)
    set_input_constant(graph, node, 1, w.astype(const_array(node.inputs[1]).dtype), f"{node.inputs[1].name}_folded")
    dtype = w.dtype
    if op == "MatMul":
        if np.any(delta != 0):
            add = ir.node("Add", [node.outputs[0], None], name=f"{node.name}_folded_bias")
            result = node.outputs[0]
            graph.insert_after(node, add)
            result.replace_all_uses_with(add.outputs[0], replace_graph_outputs=False)
            add.replace_input_with(0, result)
            set_input_constant(graph, add, 1, delta.astype(dtype), f"{node.name}_folded_bias")
            add.outputs[0].shape, add.outputs[0].dtype = result.shape, result.dtype
            a.axis[add.outputs[0]] = a.axis.get(result, -1)
        return
    if op == "Gemm" and bias is not None:
        delta = delta / attr_float(node, "beta", 1.0)
    if bias is not None or np.any(delta != 0):
        base = np.zeros(len(delta)) if bias is None else np.broadcast_to(bias, delta.shape)
        if op == "Gemm" and bias is None:
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        new_bias = (base + delta).astype(dtype)
        if scalar_bias and not np.any(delta != 0):
            return  # a broadcast scalar bias fits any number of rows
        set_input_constant(graph, node, 2, new_bias, f"{node.name or 'bias'}_bias_folded")


def _shrink_grouped_input(w: np.ndarray, consts: np.ndarray, kept: np.ndarray, groups: int):
    """W[M, C/g, k...] of a grouped Conv without the dropped input channels (the same number in
    every group, see _decide), and the bias change from dropped constant channels."""
    n_out, per_in = w.shape[0], w.shape[1]
    per_out = n_out // groups
    mask = np.zeros(groups * per_in, bool)
    mask[kept] = True
    mask = mask.reshape(groups, per_in)
    delta = np.zeros(n_out)
    blocks = []
    for j in range(groups):
        rows = w[j * per_out:(j + 1) * per_out]
        c = consts[j * per_in:(j + 1) * per_in][~mask[j]]
        if np.any(c != 0):
            delta[j * per_out:(j + 1) * per_out] = (
                rows[:, ~mask[j]].astype(np.float64).reshape(per_out, len(c), -1).sum(axis=2) @ c)
        blocks.append(rows[:, mask[j]])
    return np.concatenate(blocks), delta


# ---------------------------------------------------------------- small helpers
def _channels(value: ir.Value, a: _Analysis) -> int:
    return len(a.consts[value])


def _is_linked_output(value: ir.Value, a: _Analysis) -> bool:
    producer = value.producer()
    return producer is not None and any((producer, i) in a.linked for i in range(len(producer.inputs)))


def _erf(c: np.ndarray) -> np.ndarray:
    from math import erf

    return np.array([erf(v) if np.isfinite(v) else np.nan for v in c.reshape(-1)]).reshape(c.shape)


def _auto_pad(node: ir.Node) -> str:
    attr = node.attributes.get("auto_pad")
    return "NOTSET" if attr is None else attr.value


def _per_channel_constant(c: np.ndarray | None, rank: int, axis: int, n: int) -> np.ndarray | None:
    """A constant operand's value per channel, if it is constant within each channel."""
    if c is None or c.ndim > rank:
        return None
    slot = axis - (rank - c.ndim)
    if any(d != 1 for i, d in enumerate(c.shape) if i != slot):
        return None
    if slot < 0 or c.shape[slot] == 1:
        return np.full(n, float(c.reshape(-1)[0]))
    return c.reshape(-1).astype(np.float64) if c.shape[slot] == n else None


def _reshape_feature_slot(node: ir.Node, out: ir.Value) -> int | None:
    """Reshape into [N, F]: where F sits in the shape constant (it must be a constant of rank 1)."""
    shape = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None or shape.ndim != 1 or len(shape) != 2 or attr_int(node, "allowzero", 0):
        return None
    return 1


def _batch_dim_gather(value: ir.Value | None) -> ir.Value | None:
    """If `value` is Gather(Shape(v), 0) (optionally Unsqueezed to [1]), the `v` whose dim 0 it reads."""
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == "Unsqueeze" and node.domain == "":
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else np.array(attr_ints(node, "axes", []))
        if axes is None or axes.reshape(-1).tolist() != [0]:
            return None
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Gather" or node.domain != "" or attr_int(node, "axis", 0) != 0:
        return None
    index = const_array(node.inputs[1])
    shape_node = node.inputs[0].producer()
    if index is None or index.size != 1 or int(index.reshape(-1)[0]) != 0 or shape_node is None \
            or shape_node.op_type != "Shape" or attr_int(shape_node, "start", 0) != 0:
        return None
    return shape_node.inputs[0]


def _is_batch_flatten_shape(shape: ir.Value, x: ir.Value) -> bool:
    """The shape input of `x.view(x.size(0), -1)` as PyTorch exports it:
    Concat(Unsqueeze(Gather(Shape(v), 0)), [-1]) where v has x's batch dim."""
    node = shape.producer() if shape is not None else None
    if node is None or node.op_type != "Concat" or node.domain != "" or len(node.inputs) != 2:
        return False
    tail = const_array(node.inputs[1])
    source = _batch_dim_gather(node.inputs[0])
    if tail is None or tail.reshape(-1).tolist() != [-1] or source is None or source.shape is None:
        return False
    return source is x or (x.shape is not None and _same_dim(source.shape[0], x.shape[0]))


def _same_dim(a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a.value == b.value


def _reads_only_batch_dim(shape_node: ir.Node) -> bool:
    """Shape(x) whose every use is Gather(., 0): removing channels of x does not change it."""
    out = shape_node.outputs[0]
    if out.is_graph_output() or attr_int(shape_node, "start", 0) != 0:
        return False
    return all(use.node.op_type == "Gather" and use.idx == 0 and _batch_dim_gather_node_ok(use.node)
               for use in out.uses())


def _batch_dim_gather_node_ok(gather: ir.Node) -> bool:
    index = const_array(gather.inputs[1]) if len(gather.inputs) > 1 else None
    return attr_int(gather, "axis", 0) == 0 and index is not None and index.size == 1 \
        and int(index.reshape(-1)[0]) == 0
