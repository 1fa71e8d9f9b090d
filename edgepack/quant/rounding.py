"""The rounding stage: fit each quantized layer's integer weights (and bias) to the float model's
output on real data, layer by layer in graph order, on a model whose Q/DQ is already inserted.

    x ─► Q ─► DQ ─┐                        the layer's real input: the DQ'd x of the current
    W_q ─────► DQ ─┼─► Conv ─► y           (already fitted upstream) QDQ model, ORT optimizations off
    b ─────────────┘                       the target: y of the float model, same tensor name

For each Conv (grouped, depthwise), Gemm and MatMul whose weight is DequantizeLinear(W_q, s, z),
the streamed moments of its input patches and target (layer_math.LayerStats) give its output
error as a quadratic form in the weights, so every technique is a small matrix problem:

    clip       per-channel clip ratio of the scale (weight_fit.clip_search)
    adaround   learned up/down rounding of every weight (weight_fit.adaround)
    bias       b = E[y_float] - W~ E[x_quantized]: removes the mean output shift of weight rounding
               *and* of the quantized upstream (the inputs the layer really sees)
    block      the layer that closes a residual block (its output, through its bias Add, meets
               the block's input in an Add) is fitted to the block's output instead of its own:
               target y_float + (skip_float - skip_quantized), so that the block's last layer
               also absorbs what quantization did to the skip path and the rest of the block

Each layer's W_q, s (and bias, with its int32 scale s_x * s_w on ONNX Runtime targets) are then
rewritten in place, and the next layers see its fitted output. The integer grid is the one the
DQ and the policy define: q in [-qmax, qmax] stored as q + z (z = 0 for int8, 128 for uint8).
Memory: only K x K moments per layer are kept (no activations), one batch at a time.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.graph import const_array, copy_model, node_label
from edgepack.quant.layer_math import LayerShape, LayerStats, layer_shape
from edgepack.quant.weight_fit import Grid, adaround, clip_search

logger = logging.getLogger(__name__)

TECHNIQUES = ("clip", "adaround", "bias", "block")
METHODS = ("nearest", "clip", "adaround", "bias", "block", "all", "auto")
DEFAULT_SAMPLES = 256
MIN_ROWS_PER_WEIGHT = 4            # learned rounding needs this many input rows per weight of a row
ROWS_PER_SAMPLE = 64                # output positions of each sample that enter the moments
FEED_BUDGET_BYTES = 64 * 2**20     # one batch of model inputs


# "auto": what measured better within the time budget (docs/benchmarks.md, bench_rounding.py, 256
# calibration samples). Learned rounding where INT8 loses accuracy: TensorRT targets (symmetric
# activations) and CPU targets with 7-bit weights (x86-cpu). ShuffleNetV2 top-1 agreement with FP32
# on 500 held-out COCO crops: TensorRT-style 89.4 -> 91.0 %, x86-cpu 85.2 -> 90.4 %; ResNet-20 top-1
# on 2000 held-out images (FP32 81.80): 81.65 -> 81.95, 81.40 -> 82.00; the decoder without
# SmoothQuant x86-cpu x1.313 -> x1.189 perplexity. With 8-bit weights on ORT (x86-cpu-vnni, arm64)
# it measured equal or worse (ShuffleNetV2 91.4 -> 91.0, ResNet-20 81.55 -> 81.60, decoder x1.237 ->
# x1.250): nearest. clip, bias and block did not add to learned rounding.
AUTO_LEARNED, AUTO_PLAIN = ("adaround",), ()


def techniques_for(method: str, policy=None) -> tuple[str, ...]:
    """`method` -> the techniques it runs. "clip+bias" combines; "all" = every one; "auto" is the
    measured default for the policy (AUTO_LEARNED where INT8 loses accuracy, else AUTO_PLAIN)."""
    method = (method or "nearest").lower()
    if method == "nearest":
        return ()
    if method == "auto":
        learned = policy is not None and (policy.tensorrt or int(policy.weight_qmax) < 127)
        return AUTO_LEARNED if learned else AUTO_PLAIN
    if method == "all":
        return TECHNIQUES
    parts = tuple(p.strip() for p in method.split("+"))
    unknown = [p for p in parts if p not in TECHNIQUES]
    if unknown:
        raise EdgepackError(f"--rounding {method}: unknown technique '{unknown[0]}'",
                            hint=f"use one of {', '.join(METHODS)} or a '+' list of {', '.join(TECHNIQUES)}")
    return tuple(t for t in TECHNIQUES if t in parts)


@dataclasses.dataclass
class LayerResult:
    node: str
    op_type: str
    techniques: tuple[str, ...]
    error_nearest: float        # relative output error sum||y~ - y||^2 / sum||y - E y||^2, nearest rounding
    error_fitted: float
    clip_ratio_mean: float = 1.0
    changed_weights: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RoundingReport:
    method: str
    techniques: tuple[str, ...]
    samples: int
    seconds: float
    layers: list[LayerResult] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"method": self.method, "techniques": list(self.techniques), "samples": self.samples,
                "seconds": self.seconds, "layers": [layer.to_json() for layer in self.layers],
                "skipped": [list(s) for s in self.skipped]}

    def text(self) -> str:
        if not self.layers:
            return f"rounding {self.method}: no layer fitted"
        gain = [l.error_fitted / l.error_nearest for l in self.layers if l.error_nearest > 0]
        return (f"rounding {'+'.join(self.techniques)}: {len(self.layers)} layers on {self.samples} samples "
                f"in {self.seconds:.1f} s, median layer error x{np.median(gain):.2f} of nearest rounding")


@dataclasses.dataclass
class _Layer:
    node: ir.Node                  # in the QDQ model
    dq: ir.Node                    # DequantizeLinear of the weight
    shape: LayerShape
    w_float: np.ndarray
    b_float: np.ndarray | None
    zero: np.ndarray               # the DQ's zero point (0 or 128), as stored
    axis: int | None
    target: str | None             # the float model's tensor of the node's output
    bias_add: ir.Node | None = None  # MatMul -> Add(constant): the bias a MatMul layer has
    skip: tuple[ir.Value, str] | None = None  # block output target: the skip in the QDQ model, its float name


def round_weights(qdq_model: ir.Model, float_model: ir.Model, data, policy, *, method: str = "auto",
                  decisions=None, seed: int = 0, progress: bool = False, limit: int | None = DEFAULT_SAMPLES,
                  iterations: int = 600, preprocess=None) -> RoundingReport:
    """Fit the weights of every quantized weighted layer of `qdq_model` (rewritten in place) to the
    outputs of `float_model` (the same graph before Q/DQ) on `data`, with `method`'s techniques;
    each fitted layer gets a note in `decisions`. `limit`: samples used (None: all)."""
    from edgepack.calib.data import input_specs_of, open_dataset

    started = time.perf_counter()
    techniques = techniques_for(method, policy)
    report = RoundingReport(method, techniques, 0, 0.0)
    if not techniques:
        return report
    if data is None:
        raise EdgepackError("--rounding needs calibration data to fit the weights to",
                            hint="pass --data D, or --rounding nearest with --ranges")
    layers, report.skipped = _find_layers(qdq_model, float_model)
    if not layers:
        return report
    if "block" in techniques:
        float_by_output = {n.outputs[0].name: n for n in float_model.graph if n.outputs}
        for layer in layers:
            layer.skip = _residual_skip(layer, float_by_output)
    np.random.default_rng(seed)
    float_session = None
    order = _waves(qdq_model, layers)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(layers), desc="rounding", unit="layer", leave=False, disable=None)
    probe_specs = input_specs_of(runtime.session(_cone(float_model, [_output_name(float_model)]), lean=True))
    batch = _batch_size(probe_specs)
    dataset = open_dataset(data, probe_specs, batch_size=batch, limit=limit, preprocess=preprocess)
    for wave in order:
        stats = _collect(qdq_model, float_model, wave, dataset, seed)
        report.samples = max(report.samples, stats.pop("__samples__", 0))
        for layer in wave:
            t0 = time.perf_counter()
            result = _fit(layer, stats[id(layer)], policy, techniques, iterations, seed)
            result.seconds = time.perf_counter() - t0
            report.layers.append(result)
            _note(decisions, layer, result)
            if bar is not None:
                bar.update(1)
        runtime.trim_memory()
    if bar is not None:
        bar.close()
    del float_session
    report.seconds = time.perf_counter() - started
    logger.info("%s", report.text())
    return report


def _find_layers(model: ir.Model, float_model: ir.Model) -> tuple[list[_Layer], list[tuple[str, str]]]:
    float_by_output = {n.outputs[0].name: n for n in float_model.graph if n.outputs}
    layers, skipped = [], []
    for node in model.graph:
        if node.domain != "" or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        dq = node.inputs[1].producer() if node.inputs[1] is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or const_array(dq.inputs[0]) is None:
            continue
        label = node_label(node)
        if len(dq.outputs[0].uses()) != 1:
            skipped.append((label, "weight shared with another node"))
            continue
        twin = float_by_output.get(node.outputs[0].name)
        w_float = const_array(twin.inputs[1]) if twin is not None and len(twin.inputs) > 1 else None
        if w_float is None or twin.op_type != node.op_type:
            skipped.append((label, "no float twin with a constant weight"))
            continue
        shape = layer_shape(node, w_float)
        if shape is None:
            skipped.append((label, "layout not handled (auto_pad, transA, alpha/beta, 3-D+ conv)"))
            continue
        zero = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros((), np.int8)
        axis_attr = dq.attributes.get("axis")
        scale = const_array(dq.inputs[1])
        axis = (int(axis_attr.value) if axis_attr is not None else 1) if scale.ndim else None
        b_float = None
        if len(twin.inputs) > 2 and twin.inputs[2] is not None:
            b_float = const_array(twin.inputs[2])
            if b_float is None:
                skipped.append((label, "bias is not a constant"))
                continue
        layers.append(_Layer(node, dq, shape, w_float, b_float, zero, axis, twin.outputs[0].name,
                             _bias_add(node, shape.out_channels) if node.op_type == "MatMul" else None))
    return layers, skipped


def _sole_add(value: ir.Value) -> tuple[ir.Node | None, ir.Value | None]:
    """(the Add that is `value`'s only consumer, its other input), or (None, None)."""
    users = value.uses()
    if len(users) != 1 or value.is_graph_output():
        return None, None
    add = users[0].node
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None, None
    return add, add.inputs[1] if add.inputs[0] is value else add.inputs[0]


def _bias_add(node: ir.Node, channels: int) -> ir.Node | None:
    """The Add(MatMul(x, W), b) whose constant b (one value per output feature) is the layer's
    bias, when the MatMul's output goes nowhere else."""
    add, other = _sole_add(node.outputs[0])
    b = const_array(other) if add is not None else None
    if b is None or b.size != channels or b.shape[-1] != channels:
        return None
    return add


def _residual_skip(layer: _Layer, float_by_output: dict) -> tuple[ir.Value, str] | None:
    """(the skip input as the QDQ model computes it, the float model's name of it) when the
    layer closes a residual block: its output (after its bias Add, and a Q/DQ pair) goes only
    into an Add with another tensor of the same shape."""
    value = (layer.bias_add or layer.node).outputs[0]
    chain = value.name
    for _ in range(2):  # through Q -> DQ
        users = value.uses()
        if len(users) != 1 or users[0].node.op_type not in ("QuantizeLinear", "DequantizeLinear") \
                or value.is_graph_output():
            break
        value = users[0].node.outputs[0]
    add, other = _sole_add(value)
    if add is None or other is None or other.is_initializer() or const_array(other) is not None:
        return None
    if other.shape is None or value.shape is None or len(other.shape) != len(value.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(other.shape, value.shape)):
        return None  # a broadcasting Add (bias-like), not a skip
    twin = float_by_output.get(add.outputs[0].name)
    if twin is None or twin.op_type != "Add" or chain not in [v.name for v in twin.inputs if v is not None]:
        return None
    float_skip = next(v for v in twin.inputs if v is not None and v.name != chain)
    return other, float_skip.name


CLIPPING_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Softplus")


def _feeds_clipping_activation(node: ir.Node) -> bool:
    """Its output goes through Relu-like ops, where matching the pre-activation mean is wrong:
    a centred error e makes E[relu(y + e)] > E[relu(y)] (measured on ShuffleNetV2: bias correction
    of pre-Relu means raised the classifier's output error 30 %), so the layer keeps the
    weight-only correction of insertion and the next layer's correction sees the shift."""
    out = node.outputs[0]
    return any(use.node.op_type in CLIPPING_ACTIVATIONS for use in out.uses())


def _waves(model: ir.Model, layers: list[_Layer]) -> list[list[_Layer]]:
    """Layers grouped so that each group's inputs depend only on layers of earlier groups: one
    pass over the data per group."""
    by_node = {id(l.node): l for l in layers}
    upstream: dict[int, set[int]] = {}
    memo: dict[int, frozenset[int]] = {}

    def above(value: ir.Value | None) -> frozenset[int]:
        if value is None or value.producer() is None:
            return frozenset()
        node = value.producer()
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = frozenset()
        found: set[int] = set()
        for v in node.inputs:
            found |= above(v)
        if id(node) in by_node:
            found.add(id(node))
        memo[id(node)] = frozenset(found)
        return memo[id(node)]

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000 + 4 * len(model.graph)))
    for layer in layers:
        upstream[id(layer.node)] = set(above(layer.node.inputs[0]))
        skip = getattr(layer, "skip", None)  # refit's layers have none
        if skip is not None:
            upstream[id(layer.node)] |= above(skip[0])
    done: set[int] = set()
    waves = []
    remaining = list(layers)
    while remaining:
        wave = [l for l in remaining if upstream[id(l.node)] <= done]
        if not wave:
            wave = remaining[:1]
        waves.append(wave)
        done |= {id(l.node) for l in wave}
        remaining = [l for l in remaining if id(l.node) not in done]
    return waves


def _output_name(model: ir.Model) -> str:
    return model.graph.outputs[0].name


def _cone(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of `model` computing only the tensors `names` (weights shared)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    probe = copy_model(model)
    values = {v.name: v for node in probe.graph for v in node.outputs}
    values.update({v.name: v for v in probe.graph.inputs})
    probe.graph.outputs.clear()
    for name in dict.fromkeys(names):
        probe.graph.outputs.append(values[name])
    RemoveUnusedNodesPass()(probe)
    return probe


def _batch_size(specs) -> int:
    per_sample = 0
    for spec in specs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]]
        per_sample += int(np.prod(dims)) * 4
    return int(max(1, min(32, FEED_BUDGET_BYTES // max(per_sample * 64, 1))))


def _collect(model: ir.Model, float_model: ir.Model, wave: list[_Layer], dataset, seed: int = 0) -> dict:
    """One pass over the data: the wave's layer inputs from the QDQ model (ORT optimizations
    off, the exact QDQ math), their targets from the float model, streamed into LayerStats."""
    graph_inputs = {v.name for v in model.graph.inputs}
    x_names = [l.node.inputs[0].name for l in wave] + [l.skip[0].name for l in wave if l.skip is not None]
    fetch_x = [n for n in dict.fromkeys(x_names) if n not in graph_inputs]
    y_names = list(dict.fromkeys([l.target for l in wave] + [l.skip[1] for l in wave if l.skip is not None]))
    quantized = runtime.session(_cone(model, fetch_x), optimize=False, lean=True) if fetch_x else None
    reference = runtime.session(_cone(float_model, y_names), lean=True)
    stats = {id(l): LayerStats(l.shape, l.b_float, rows_per_sample=ROWS_PER_SAMPLE, seed=seed + i)
             for i, l in enumerate(wave)}
    samples = 0
    for batch in dataset:
        xs = dict(batch)
        if quantized is not None:
            feeds = {i.name: batch[i.name] for i in quantized.get_inputs()}
            xs.update(zip(fetch_x, runtime.run(quantized, fetch_x, feeds, where=dataset.description)))
        feeds = {i.name: batch[i.name] for i in reference.get_inputs()}
        ys = dict(zip(y_names, runtime.run(reference, y_names, feeds, where=dataset.description)))
        for layer in wave:
            target = ys[layer.target]
            if layer.skip is not None:  # the block's output, less the skip the quantized block adds
                target = target + (ys[layer.skip[1]] - xs[layer.skip[0].name])  # same shape: checked
            stats[id(layer)].update(xs[layer.node.inputs[0].name], target)
        samples += len(next(iter(batch.values())))
    stats["__samples__"] = samples
    return stats


def _fit(layer: _Layer, stats: LayerStats, policy, techniques, iterations: int, seed: int) -> LayerResult:
    shape = layer.shape
    has_bias_slot = layer.node.op_type != "MatMul" or layer.bias_add is not None
    # full: the bias removes the whole mean output error (weights and upstream); weight-only: it
    # removes the weights' own shift (W~ - W) E[x], as insertion's correction does. Either way
    # the weights are fitted to the error's covariance, the mean being the bias' job.
    # a block-closing layer (layer.skip) always takes the full correction: the block's mean error
    full = ("bias" in techniques or layer.skip is not None) and has_bias_slot \
        and not _feeds_clipping_activation(layer.node)
    weight_only = not full and has_bias_slot and bool(getattr(policy, "bias_correction", True))
    centered = full or weight_only
    quad = stats.problem(layer.w_float, centered=centered)
    plain = stats.problem(layer.w_float, centered=False)
    k = quad.h.shape[-1]
    if stats.n < MIN_ROWS_PER_WEIGHT * k:
        # too few input rows to pin K weights per row (a classifier fed one row per sample): no
        # learned rounding, and the clip search fits the float weights (not the float output,
        # which would fit noise) under H shrunk towards its diagonal
        techniques = tuple(t for t in techniques if t != "adaround")
        shrink = k / max(stats.n, 1)
        quad.h = quad.h + shrink * np.einsum("gkk->gk", quad.h)[:, :, None] * np.eye(k)
        wf = shape.to_groups(layer.w_float).astype(np.float64)
        quad.g = np.matmul(wf, quad.h)
        quad.yy = np.einsum("gmk,gmk->gm", quad.g, wf)
    wg = shape.to_groups(layer.w_float).astype(np.float64)
    grid = Grid(int(policy.weight_qmax), layer.axis is not None)
    before_w, before_b = _current(layer)
    energy = float(np.sum(plain.yy - plain.mean_y ** 2)) or 1.0
    error_nearest = _error(plain, stats, shape.to_groups(before_w), before_b) / energy
    scale0 = grid.scales(wg)
    q0 = grid.nearest(wg, scale0)
    scale, ratio = (clip_search(wg, quad, grid) if "clip" in techniques else (scale0, np.ones(wg.shape[:2])))
    q = grid.nearest(wg, scale)
    if "adaround" in techniques:
        fitted = adaround(wg, scale, quad, grid, iterations=iterations, seed=seed)
        if quad.per_channel(fitted * scale).sum() < quad.per_channel(q * scale).sum():
            q = fitted
    bias = None
    if full:
        # b = E[y] - W~ E[x]; quad.mean_y is E[y - b_float], so the float bias is added back
        bias = (stats.bias + quad.mean_y - np.einsum("gmk,gk->gm", q * scale, quad.mean_x)).reshape(-1)
    elif weight_only:
        bias = (stats.bias - np.einsum("gmk,gk->gm", q * scale - wg, quad.mean_x)).reshape(-1)
    elif before_b is not None:
        bias = before_b
    error_fitted = _error(plain, stats, q * scale, bias) / energy
    _rewrite(layer, shape, q, scale, bias if centered else None, grid, policy)
    return LayerResult(node_label(layer.node), layer.node.op_type, tuple(techniques), error_nearest, error_fitted,
                       float(np.mean(ratio)), int(np.sum(q != q0)))


def _error(plain, stats: LayerStats, v: np.ndarray, bias: np.ndarray | None) -> float:
    """Mean squared output error of weights V[g, M/g, K] with `bias` against the float output:
    the quadratic form plus the bias' shift d = b - b_float: + 2 d (V E[x] - E[t]) + d^2."""
    err = plain.per_channel(v)
    if bias is not None:
        d = np.asarray(bias, np.float64).reshape(stats.bias.shape) - stats.bias
        err = err + 2 * d * (np.einsum("gmk,gk->gm", v, plain.mean_x) - plain.mean_y) + d * d
    elif stats.bias is not None:
        d = -stats.bias
        err = err + 2 * d * (np.einsum("gmk,gk->gm", v, plain.mean_x) - plain.mean_y) + d * d
    return float(np.maximum(err, 0).sum())


def _current(layer: _Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """What the QDQ model computes now: its dequantized weight and its bias."""
    dq = layer.dq
    q = const_array(dq.inputs[0]).astype(np.float64)
    scale = const_array(dq.inputs[1]).astype(np.float64)
    zero = np.asarray(layer.zero, np.float64)
    if layer.axis is not None and scale.ndim:
        shape = [1] * q.ndim
        shape[layer.axis] = -1
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.ndim else zero)
    w = (q - zero) * scale
    node = layer.node
    b_value = node.inputs[2] if node.op_type != "MatMul" and len(node.inputs) > 2 else None
    if b_value is None:
        return w, None
    bias = const_array(b_value)
    if bias is None and b_value.producer() is not None and b_value.producer().op_type == "DequantizeLinear":
        b_dq = b_value.producer()
        bias = const_array(b_dq.inputs[0]).astype(np.float64) * const_array(b_dq.inputs[1]).astype(np.float64)
    return w, (None if bias is None else np.broadcast_to(np.asarray(bias, np.float64).reshape(-1),
                                                         (layer.shape.out_channels,)))


def _rewrite(layer: _Layer, shape: LayerShape, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None,
             grid: Grid, policy) -> None:
    """New W_q and scale initializers on the weight DQ; the bias (float, or int32 DQ with scale
    s_x * s_w) when bias correction ran, or when the weight scale changed under an int32 bias."""
    from edgepack.passes.rewrite import set_input_constant

    graph = layer.node.graph
    dq = layer.dq
    old_scale = const_array(dq.inputs[1]).astype(np.float64)
    zero = np.asarray(layer.zero)
    stored_dtype = const_array(dq.inputs[0]).dtype
    stored = shape.from_groups(q).astype(np.int32)
    if grid.per_channel:
        channel = scale.reshape(-1)
        new_scale = channel.astype(np.float32)
        zshape = [1] * stored.ndim
        zshape[layer.axis] = -1
        stored = stored + zero.astype(np.int32).reshape(zshape)
    else:
        new_scale = np.array(scale.reshape(-1)[0], np.float32)
        stored = stored + int(zero.reshape(-1)[0])
    name = dq.inputs[0].name
    _replace(graph, dq, 0, stored.astype(stored_dtype), name)
    _replace(graph, dq, 1, new_scale.reshape(old_scale.shape), dq.inputs[1].name)
    node = layer.node
    if node.op_type == "MatMul":
        if bias is not None and layer.bias_add is not None:   # bias = the shift to add (no float bias here)
            add = layer.bias_add
            index = 1 if add.inputs[0] is node.outputs[0] else 0
            old = const_array(add.inputs[index])
            _replace(graph, add, index, (old + bias.reshape(old.shape)).astype(old.dtype), add.inputs[index].name)
        return
    b_value = node.inputs[2] if len(node.inputs) > 2 else None
    b_dq = b_value.producer() if b_value is not None else None
    if b_dq is not None and b_dq.op_type == "DequantizeLinear":
        b_scale_old = const_array(b_dq.inputs[1]).astype(np.float64)
        x_scale = float(np.asarray(b_scale_old).reshape(-1)[0] / max(float(np.asarray(old_scale).reshape(-1)[0]), 1e-30))
        if bias is None:
            bias = (const_array(b_dq.inputs[0]).astype(np.float64) * b_scale_old).reshape(-1)
        b_scale = (x_scale * np.broadcast_to(new_scale, bias.shape)).astype(np.float32)
        b_q = np.clip(np.round(bias / b_scale), -(2**31 - 1), 2**31 - 1).astype(np.int32)
        if np.asarray(b_scale_old).ndim == 0:
            b_scale = np.array(b_scale.reshape(-1)[0], np.float32)
        _replace(graph, b_dq, 0, b_q, b_dq.inputs[0].name)
        _replace(graph, b_dq, 1, b_scale.reshape(np.shape(b_scale_old)) if np.ndim(b_scale_old) else b_scale,
                 b_dq.inputs[1].name)
    elif bias is not None and b_value is None and policy.int32_bias:
        _add_int32_bias(graph, node, bias, new_scale)
    elif bias is not None:
        _replace(graph, node, 2, bias.astype(np.float32), f"{node_label(node)}_bias_fitted")


def _add_int32_bias(graph: ir.Graph, node: ir.Node, bias: np.ndarray, w_scale: np.ndarray) -> None:
    """ONNX Runtime targets fuse Conv/Gemm with an int32 bias DQ (scale s_x * s_w) only."""
    from edgepack.passes.rewrite import new_initializer

    x_dq = node.inputs[0].producer()
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or const_array(x_dq.inputs[1]) is None:
        return
    x_scale = float(const_array(x_dq.inputs[1]).reshape(-1)[0])
    scale = (x_scale * np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), bias.shape)).astype(np.float32)
    if np.any(scale <= 0):
        return
    q = np.clip(np.round(bias / scale), -(2**31 - 1), 2**31 - 1).astype(np.int32)
    if np.all(scale == scale[0]):
        scale = np.array(scale[0], np.float32)
    name = f"{node_label(node)}_bias"
    qv = new_initializer(graph, q, f"{name}_quantized")
    sv = new_initializer(graph, scale, f"{name}_scale")
    zv = new_initializer(graph, np.zeros(scale.shape, np.int32), f"{name}_zero_point")
    dq = ir.node("DequantizeLinear", [qv, sv, zv], {"axis": 0} if scale.ndim else {}, name=f"{name}_DequantizeLinear")
    dq.outputs[0].name = f"{name}_dequantized"
    graph.insert_before(node, dq)
    dq.outputs[0].shape, dq.outputs[0].dtype = ir.Shape(bias.shape), ir.DataType.FLOAT
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, dq.outputs[0])


def _replace(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    from edgepack.passes.rewrite import set_input_constant

    old = node.inputs[index] if index < len(node.inputs) else None
    set_input_constant(graph, node, index, np.ascontiguousarray(array), name)
    if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output():
        graph.initializers.pop(old.name, None)


def _note(decisions, layer: _Layer, result: LayerResult) -> None:
    if decisions is None:
        return
    change = (result.error_fitted / result.error_nearest - 1) if result.error_nearest > 0 else 0.0
    text = (f"rounding: {'+'.join(result.techniques)}, layer error {change:+.0%} vs nearest "
            f"({result.changed_weights} weights moved, clip ratio {result.clip_ratio_mean:.3f})")
    figures = {"error_nearest": result.error_nearest, "error_fitted": result.error_fitted}
    label = node_label(layer.node)
    if label in decisions:
        decisions.note(label, text, **figures)
    else:
        decisions.decide(label, layer.node.op_type, "int8", text, stage="round", **figures)
