"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before calibration.

Transformer activations have a few channels far larger than the rest, so one per-tensor scale
wastes most INT8 levels on them; weights quantized per output channel do not care. For
y = x @ W with input channel k scaled by s_k:

    y = (x / s) @ (diag(s) W)          s_k = max|x_k|^α / max_j |W_kj|^(1-α)

computes the same y. α = 0 leaves activations alone, α = 1 moves all of their range into W
(0.5 is the paper's default). x / s costs nothing when the op that produces x can absorb it:

    RMSNorm ... Mul(gamma) ─► x ─► MatMul Wq, Wk, Wv    gamma' = gamma / s   (one s for all three)
    Mul(silu(g), MatMul(m, Wu)) ─► x ─► MatMul Wd       Wu' = Wu / s (columns)
    MatMul(a, Wv) ─► Reshape ─► Transpose ─► MatMul(P, v) ─► Transpose ─► Reshape ─► x ─► MatMul Wo
                                                         Wv' = Wv / s (columns)
The last is exact because attention is linear in v and the two Transposes (the same perm, an
involution that keeps the last axis) and Reshapes (split / merge of the last axis) map channel
h*D + d of x back to column h*D + d of Wv; the result is checked on one batch and undone if the
model's output moved (a grouped-query model that repeats v heads would need tied factors).
`alpha="auto"` smooths only activations whose largest channel maximum is more than
OUTLIER_RATIO times their median one, with AUTO_ALPHA.

Other activations are left as they are (an extra Mul would cost a float op at run time). The
per-channel maxima come from one ONNX Runtime pass over the calibration data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import attr_int, const_array, node_label
from edgepack.passes.rewrite import set_input_constant

logger = logging.getLogger(__name__)
OUTLIER_RATIO = 8.0   # "auto": max over channels of max|x_k| / their median
AUTO_ALPHA = 0.8   # measured on the representative decoder: 0.5 leaves TensorRT-style +4 %, 0.8 +0.3 %


@dataclass
class SmoothResult:
    alpha: float
    smoothed: list[str] = field(default_factory=list)  # activations whose channels were rescaled

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "smoothed": self.smoothed}


@dataclass
class _Group:
    x: ir.Value
    consumers: list[tuple[ir.Node, int]]   # (MatMul/Gemm, axis of W that indexes x's channels)
    absorb: tuple[str, ir.Node, int]       # ("gamma" | "columns" | "heads", node, input index of the constant)


def smooth(model: ir.Model, data, *, alpha: float | str = 0.5, limit: int | None = 64,
           batch_size: int = 8) -> SmoothResult:
    """Rescale, in place, every activation a foldable producer feeds only to constant-weight
    MatMul/Gemm nodes, by the SmoothQuant factors measured on `data`. `alpha="auto"`: only the
    activations with outlier channels (OUTLIER_RATIO), with AUTO_ALPHA."""
    auto = alpha == "auto"
    if auto:
        alpha = AUTO_ALPHA
    if isinstance(alpha, str) or not 0.0 <= alpha <= 1.0:
        raise EdgepackError(f"smoothquant alpha {alpha} is outside 0..1", hint="0.5 is the usual value, or auto")
    result = SmoothResult(alpha)
    groups = _groups(model)
    if not groups:
        return result
    maxima = _channel_absmax(model, [g.x for g in groups], data, limit, batch_size)
    before = _outputs_on_one_batch(model, data) if any(g.absorb[0] == "heads" for g in groups) else None
    heads = []
    for group in groups:
        act = maxima.get(group.x.name)
        if act is None:
            continue
        if auto and not act.max() > OUTLIER_RATIO * max(float(np.median(act)), 1e-30):
            continue
        weight = np.zeros_like(act)
        for node, axis in group.consumers:
            w = np.abs(const_array(node.inputs[1]).astype(np.float64))
            weight = np.maximum(weight, w.max(axis=1 - axis) if axis in (0, 1) else 0)
        ok = (act > 0) & (weight > 0)
        s = np.ones_like(act)
        s[ok] = act[ok] ** alpha / weight[ok] ** (1 - alpha)
        s = np.clip(s, 1e-5, 1e5)
        if np.allclose(s, 1.0):
            continue
        undo = _apply(model.graph, group, s.astype(np.float64))
        result.smoothed.append(group.x.name)
        if group.absorb[0] == "heads":
            heads.append((group, undo))
    if heads and not _close(_outputs_on_one_batch(model, data), before):
        for group, undo in heads:
            undo()
            result.smoothed.remove(group.x.name)
        logger.warning("smoothquant: the attention-output path of this model does not map channels one "
                       "to one (grouped-query attention?); left unsmoothed")
    logger.info("smoothquant (alpha %.2f): rescaled %d activations", alpha, len(result.smoothed))
    return result


def _groups(model: ir.Model) -> list[_Group]:
    groups = []
    for node in model.graph:
        if node.op_type != "Mul" or node.domain != "" or len(node.inputs) != 2:
            continue
        x = node.outputs[0]
        consumers = _weight_consumers(x)
        if not consumers or x.is_graph_output():
            continue
        k = _channels(consumers)
        absorb = None
        for side in (0, 1):
            c = const_array(node.inputs[side])
            if c is not None and c.size == k and c.shape[-1] == k and len(node.inputs[side].uses()) == 1:
                absorb = ("gamma", node, side)
            elif c is None and (p := node.inputs[side].producer()) is not None and p.op_type == "MatMul" \
                    and len(node.inputs[side].uses()) == 1:
                w = const_array(p.inputs[1])
                if w is not None and w.ndim == 2 and w.shape[1] == k and len(p.inputs[1].uses()) == 1:
                    absorb = ("columns", p, 1)
            if absorb:
                break
        if absorb:
            groups.append(_Group(x, consumers, absorb))
    for node in model.graph:  # attention outputs: ... MatMul(P, v) -> Transpose -> Reshape -> x
        if node.op_type != "Reshape" or node.domain != "":
            continue
        x = node.outputs[0]
        consumers = _weight_consumers(x)
        if not consumers or x.is_graph_output():
            continue
        source = _value_projection(node, _channels(consumers))
        if source is not None:
            groups.append(_Group(x, consumers, ("heads", source, 1)))
    return groups


def _only_use(value: ir.Value, op: str) -> ir.Node | None:
    """The producer of `value` if it is an `op` whose output has this one use."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op or node.domain != "" or len(value.uses()) != 1:
        return None
    return node


def _value_projection(merge: ir.Node, k: int) -> ir.Node | None:
    """The MatMul(a, Wv) at the head of Reshape(Transpose(MatMul(P, Transpose(Reshape(a @ Wv)))))
    ending in `merge`, when the two Transposes are one involution keeping the last axis."""
    t2 = _only_use(merge.inputs[0], "Transpose")
    pv = t2 and _only_use(t2.inputs[0], "MatMul")
    t1 = pv and _only_use(pv.inputs[1], "Transpose")
    split = t1 and _only_use(t1.inputs[0], "Reshape")
    proj = split and _only_use(split.inputs[0], "MatMul")
    if proj is None or const_array(pv.inputs[0]) is not None:
        return None
    perms = [list(t.attributes["perm"].value) if "perm" in t.attributes else None for t in (t1, t2)]
    perm = perms[0]
    if perm is None or perms[1] != perm or perm[-1] != len(perm) - 1 or any(perm[p] != i for i, p in enumerate(perm)):
        return None
    w = const_array(proj.inputs[1])
    if w is None or w.ndim != 2 or w.shape[1] != k or len(proj.inputs[1].uses()) != 1:
        return None
    return proj


def _weight_consumers(x: ir.Value) -> list[tuple[ir.Node, int]] | None:
    """[(node, axis of its weight that indexes x's last axis)] if every use of x is the data input
    of a MatMul with a 2-D constant weight or a Gemm (transA = 0); None otherwise."""
    found = []
    for use in x.uses():
        node = use.node
        w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if use.idx != 0 or w is None or w.ndim != 2 or node.domain != "":
            return None
        if node.op_type == "MatMul":
            found.append((node, 0))
        elif node.op_type == "Gemm" and not attr_int(node, "transA", 0):
            found.append((node, 1 if attr_int(node, "transB", 0) else 0))
        else:
            return None
    sizes = {const_array(n.inputs[1]).shape[a] for n, a in found}
    return found if len(sizes) == 1 else None


def _channels(consumers) -> int:
    node, axis = consumers[0]
    return const_array(node.inputs[1]).shape[axis]


def _apply(graph: ir.Graph, group: _Group, s: np.ndarray):
    """Rescales the group; returns a function that restores the original constants."""
    saved = [(node, idx, node.inputs[idx]) for node, idx in
             [(n, 1) for n, _ in group.consumers] + [(group.absorb[1], group.absorb[2])]]
    for node, axis in group.consumers:
        w = const_array(node.inputs[1]).astype(np.float64)
        shape = (-1, 1) if axis == 0 else (1, -1)
        set_input_constant(graph, node, 1, (w * s.reshape(shape)).astype(np.float32),
                           f"{node.inputs[1].name}_smoothed")
    kind, node, index = group.absorb
    c = const_array(node.inputs[index]).astype(np.float64)
    if kind == "gamma":
        new = c / s.reshape(c.shape)
    else:  # the columns of the MatMul weight that produces one factor of the Mul, or v
        new = c / s.reshape(1, -1)
    set_input_constant(graph, node, index, new.astype(np.float32), f"{node.inputs[index].name}_smoothed")
    logger.debug("smoothed '%s' (absorbed by %s '%s')", group.x.name, kind, node_label(node))

    def undo():
        for n, idx, value in saved:
            n.replace_input_with(idx, value)
    return undo


def _outputs_on_one_batch(model: ir.Model, data) -> list[np.ndarray]:
    from edgepack import runtime
    from edgepack.calib.data import input_specs_of, open_dataset

    session = runtime.session(model, optimize=False)
    batch = next(iter(open_dataset(data, input_specs_of(session), batch_size=1, limit=1)))
    return session.run(None, batch)


def _close(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.allclose(x, y, rtol=1e-3, atol=1e-3 * float(np.abs(y).max(initial=0.0)) + 1e-6)
               for x, y in zip(a, b))


def _channel_absmax(model: ir.Model, values: list[ir.Value], data, limit, batch_size) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each value, over the data."""
    from edgepack import runtime
    from edgepack.calib.calibrate import _with_outputs
    from edgepack.calib.data import input_specs_of, open_dataset

    probe = _with_outputs(model, values)
    session = runtime.session(probe)
    names = [v.name for v in values]
    maxima: dict[str, np.ndarray] = {}
    for batch in open_dataset(data, input_specs_of(session), batch_size=batch_size, limit=limit):
        for name, out in zip(names, session.run(names, batch)):
            m = np.abs(out.reshape(-1, out.shape[-1])).max(axis=0).astype(np.float64)
            maxima[name] = np.maximum(maxima[name], m) if name in maxima else m
    return maxima
