"""Layer-wise distillation after pruning or low-rank factorization: refit the kept weights of each
layer by least squares so that its output matches the float teacher's on real data.

For a Conv / Gemm / MatMul of the compressed model, in graph order, with x its real input (the
compressed model's, upstream layers already refitted) and y the teacher's output of the same layer:

    W*, b* = argmin  sum_p ||W x_p + b - y_p||^2 + lam ||W||^2     (normal equations per group:
             [W b] = [G  S_y] [[H + lam I, S_x], [S_x^T, n]]^-1,  H = sum x x^T,  G = sum y x^T)

Weights pruned to zero stay zero (each output row is solved on its kept inputs only), so element
and 2:4 sparsity survive the refit. Layers whose output channels were removed (channel pruning)
are matched to the teacher's channels by their unchanged weight rows; the second factor of a
low-rank pair is fitted to the original layer's output (the first has no teacher). This is the
reconstruction step of ThiNet / channel pruning (He et al. 2017) without retraining; only the
moments are kept, so memory does not grow with the data.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.graph import const_array, node_label
from edgepack.passes.rewrite import set_input_constant
from edgepack.quant.layer_math import LayerShape, LayerStats, layer_shape

logger = logging.getLogger(__name__)
DEFAULT_SAMPLES = 512
RIDGE = 1e-3
ROWS_PER_SAMPLE = 64


@dataclasses.dataclass
class _Target:
    node: ir.Node
    shape: LayerShape
    tensor: str                     # the teacher's tensor
    channels: np.ndarray | None     # teacher output channels this layer computes (None: all)
    has_bias: bool


def refit(model: ir.Model, teacher: ir.Model, data, *, limit: int | None = DEFAULT_SAMPLES,
          ridge: float = RIDGE, progress: bool = False, preprocess=None) -> dict:
    """Refit `model` (a pruned or factorized copy of `teacher`, rewritten in place) to `teacher`'s
    layer outputs on `data`. Returns {layers: [{node, error_before, error_after}], samples, seconds}."""
    from edgepack.calib.data import input_specs_of, open_dataset
    from edgepack.quant.rounding import _batch_size, _cone, _waves

    started = time.perf_counter()
    targets = _targets(model, teacher)
    if not targets:
        raise EdgepackError("--refit: no layer of the compressed model matches a layer of the original",
                            hint="refit works on models from `edgepack prune` / `compress lowrank`")
    specs = input_specs_of(runtime.session(_cone(teacher, [teacher.graph.outputs[0].name]), lean=True))
    dataset = open_dataset(data, specs, batch_size=_batch_size(specs), limit=limit, preprocess=preprocess)
    rows, samples = [], 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(targets), desc="refit", unit="layer", leave=False, disable=None)
    for wave in _waves(model, targets):
        stats, samples = _collect(model, teacher, wave, dataset)
        for t in wave:
            rows.append(_solve(t, stats[id(t)], ridge))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    logger.info("refitted %d layers on %d samples", len(rows), samples)
    return {"layers": rows, "samples": samples, "seconds": time.perf_counter() - started}


def _targets(model: ir.Model, teacher: ir.Model) -> list[_Target]:
    by_output = {n.outputs[0].name: n for n in teacher.graph if n.outputs}
    by_name = {n.name: n for n in teacher.graph if n.name}
    out = []
    for node in model.graph:
        if node.domain != "" or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = const_array(node.inputs[1])
        if w is None or w.dtype.kind != "f":
            continue
        shape = layer_shape(node, w)
        if shape is None:
            continue
        twin = by_output.get(node.outputs[0].name)
        if node.name.endswith("/lowrank1"):
            continue
        if node.name.endswith("/lowrank2"):
            twin = by_name.get(node.name[: -len("/lowrank2")]) or by_output.get(node.name[: -len("/lowrank2")])
        if twin is None or twin.op_type != node.op_type:
            continue
        tw = const_array(twin.inputs[1]) if len(twin.inputs) > 1 else None
        if tw is None:
            continue
        teacher_shape = layer_shape(twin, tw)
        if teacher_shape is None:
            continue
        channels = None
        if teacher_shape.out_channels != shape.out_channels:
            channels = _matching_rows(w, tw, node.op_type, shape)
            if channels is None:
                continue
        has_bias = node.op_type != "MatMul" and len(node.inputs) > 2 and const_array(node.inputs[2]) is not None
        out.append(_Target(node, shape, twin.outputs[0].name, channels, has_bias))
    return out


def _matching_rows(w: np.ndarray, teacher_w: np.ndarray, op: str, shape: LayerShape) -> np.ndarray | None:
    """Teacher output channels whose weights equal this layer's kept rows (removed channels leave
    the other rows exactly as they were, up to the inputs removed upstream)."""
    if op != "Conv" or w.shape[1:] != teacher_w.shape[1:]:
        return None
    rows = w.reshape(w.shape[0], -1)
    teacher_rows = teacher_w.reshape(teacher_w.shape[0], -1)
    index, used = [], set()
    lookup: dict[bytes, list[int]] = {}
    for i, r in enumerate(teacher_rows):
        lookup.setdefault(r.tobytes(), []).append(i)
    for r in rows:
        match = [i for i in lookup.get(r.tobytes(), []) if i not in used]
        if not match:
            return None
        used.add(match[0])
        index.append(match[0])
    return np.array(index)


def _collect(model, teacher, wave: list[_Target], dataset) -> tuple[dict, int]:
    from edgepack.quant.rounding import _cone

    graph_inputs = {v.name for v in model.graph.inputs}
    fetch_x = [n for n in dict.fromkeys(t.node.inputs[0].name for t in wave) if n not in graph_inputs]
    y_names = list(dict.fromkeys(t.tensor for t in wave))
    student = runtime.session(_cone(model, fetch_x), lean=True) if fetch_x else None
    reference = runtime.session(_cone(teacher, y_names), lean=True)
    stats = {id(t): LayerStats(t.shape, None, rows_per_sample=ROWS_PER_SAMPLE, seed=i) for i, t in enumerate(wave)}
    samples = 0
    for batch in dataset:
        xs = dict(batch)
        if student is not None:
            feeds = {i.name: batch[i.name] for i in student.get_inputs()}
            xs.update(zip(fetch_x, runtime.run(student, fetch_x, feeds, where=dataset.description)))
        feeds = {i.name: batch[i.name] for i in reference.get_inputs()}
        ys = dict(zip(y_names, runtime.run(reference, y_names, feeds, where=dataset.description)))
        for t in wave:
            y = ys[t.tensor]
            if t.channels is not None:
                y = np.take(y, t.channels, axis=1)
            stats[id(t)].update(xs[t.node.inputs[0].name], y)
        samples += len(next(iter(batch.values())))
    return stats, samples


def _solve(t: _Target, stats: LayerStats, ridge: float) -> dict:
    """Least squares per group and output row, on the row's nonzero weights (+ bias)."""
    node, shape = t.node, t.shape
    w = const_array(node.inputs[1]).astype(np.float64)
    b = const_array(node.inputs[2]).astype(np.float64).reshape(-1) if t.has_bias else None
    wg = shape.to_groups(w)
    n = max(stats.n, 1)
    h, g = stats.h / n, stats.g / n
    mx, my = stats.sum_x / n, stats.sum_y / n
    yy = stats.sum_yy / n
    bg = (np.zeros(wg.shape[:2]) if b is None else np.broadcast_to(b, (shape.out_channels,)).reshape(wg.shape[:2]))
    before = _error(wg, bg, h, g, mx, my, yy)
    new_w, new_b = wg.copy(), bg.copy()
    k = wg.shape[2]
    for gi in range(wg.shape[0]):
        lam = ridge * max(float(np.trace(h[gi])) / k, 1e-12)
        if t.has_bias:
            a = np.zeros((k + 1, k + 1))
            a[:k, :k], a[:k, k], a[k, :k], a[k, k] = h[gi] + lam * np.eye(k), mx[gi], mx[gi], 1.0
            rhs = np.concatenate([g[gi], my[gi][:, None]], axis=1)       # [M/g, K+1]
        else:
            a, rhs = h[gi] + lam * np.eye(k), g[gi]
        keep = wg[gi] != 0
        if keep.all():
            sol = np.linalg.solve(a, rhs.T).T
            new_w[gi] = sol[:, :k]
            if t.has_bias:
                new_b[gi] = sol[:, k]
            continue
        for m in range(wg.shape[1]):
            idx = np.flatnonzero(keep[m])
            cols = np.concatenate([idx, [k]]) if t.has_bias else idx
            if cols.size == 0:
                continue
            sol = np.linalg.solve(a[np.ix_(cols, cols)], rhs[m, cols])
            new_w[gi, m] = 0.0
            new_w[gi, m, idx] = sol[: idx.size]
            if t.has_bias:
                new_b[gi, m] = sol[-1]
    after = _error(new_w, new_b, h, g, mx, my, yy)
    energy = float(np.sum(yy - my ** 2)) or 1.0
    if after < before:
        graph = node.graph
        dtype = const_array(node.inputs[1]).dtype
        set_input_constant(graph, node, 1, shape.from_groups(new_w).astype(dtype), f"{node.inputs[1].name}_refit")
        if t.has_bias:
            set_input_constant(graph, node, 2, new_b.reshape(-1).astype(dtype), f"{node.inputs[2].name}_refit")
    return {"node": node_label(node), "op_type": node.op_type, "error_before": before / energy,
            "error_after": min(after, before) / energy}


def _error(wg, bg, h, g, mx, my, yy) -> float:
    """E||W x + b - y||^2 from the moments."""
    quad = np.einsum("gmk,gmk->gm", np.matmul(wg, h) - 2 * g, wg) + yy
    cross = 2 * bg * (np.einsum("gmk,gk->gm", wg, mx) - my) + bg * bg
    return float(np.maximum(quad + cross, 0).sum())
