"""Magnitude pruning of Conv / Gemm / MatMul weights: element-wise, 2:4 structured, or whole channels."""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import attr_int, const_array, copy_model, iter_nodes, node_label, weight_input, weight_output_axis
from edgepack.passes.disjoint_sets import DisjointSets

logger = logging.getLogger(__name__)

GRANULARITIES = ("element", "2:4", "channel")
# Ops that map a zero channel to a zero channel, one input to one output, channel axis kept.
_ZERO_PRESERVING = {"Relu", "LeakyRelu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                    "GlobalMaxPool", "Identity", "Dropout", "Tanh", "PRelu", "Neg", "Abs",
                    "BatchNormalization"}
# Ops after which a zero channel stays zero but its layout changes: safe to prune, a sink.
_SINKS = {"Flatten", "Reshape"}


def select_nodes(model: ir.Model, include=(), exclude=(), ops=("Conv", "Gemm", "MatMul")) -> list[ir.Node]:
    """Weighted nodes with a constant weight, filtered by node name or op type."""
    include, exclude = set(include), set(exclude)
    nodes = [n for n in iter_nodes(model) if n.op_type in ops and weight_input(n) is not None]
    known = {n.name for n in nodes} | {n.op_type for n in nodes}
    for name in (include | exclude) - known:
        raise EdgepackError(f"--include/--exclude '{name}': no prunable node or op type of that name",
                            hint="see `edgepack inspect MODEL` for node names")
    return [n for n in nodes if (not include or n.name in include or n.op_type in include)
            and n.name not in exclude and n.op_type not in exclude]


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(array, name=value.name)


def reduction_axis(node: ir.Node, rank: int) -> int:
    """The weight axis summed over: Conv W[M, C, k..] -> 1; Gemm B[K, N] -> 0 (transB: 1); MatMul -> -2."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if attr_int(node, "transB", 0) else 0
    return rank - 2


def prune_2_4(w: np.ndarray, axis: int) -> np.ndarray | None:
    """Keep the 2 largest |w| in every group of 4 consecutive weights along `axis`; None if not a multiple of 4."""
    if w.shape[axis] % 4:
        return None
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    order = np.argsort(-np.abs(groups), axis=-1, kind="stable")
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, order[..., :2], True, axis=-1)
    pruned = np.where(mask, groups, 0).reshape(moved.shape).astype(w.dtype)
    return np.moveaxis(pruned, -1, axis)


def _prune_smallest(w: np.ndarray, count: int) -> np.ndarray:
    """Zero the `count` smallest-magnitude weights (zeros count first, so a second run is a no-op)."""
    flat = w.reshape(-1).copy()
    if count > 0:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0
    return flat.reshape(w.shape)


@dataclasses.dataclass(frozen=True)
class _Chain:
    """A prunable producer and the BatchNormalizations its output passes through."""
    node: ir.Node
    batchnorms: tuple[ir.Node, ...]


class PruneWeightsPass(ir.passes.InPlacePass):
    """Sets the smallest-magnitude weights of Conv/Gemm/MatMul to exactly zero.

    element: per layer (or `scope="global"`, one threshold for all) zero the round(s * size)
        weights of smallest |w|.
    2:4: in each group of 4 consecutive weights along the reduction axis (Conv input channels,
        Gemm/MatMul K), keep the 2 of largest |w| (Ampere/Orin sparse tensor cores). Layers whose
        reduction size is not a multiple of 4 are left as they are.
    channel: rank output channels by the L1/L2 norm of their weights, keep ceil((1 - s) * M);
        a dropped channel k gets W[k]=0, bias[k]=0 and scale[k]=bias[k]=0 in any following
        BatchNormalization, so it carries exactly 0 and FoldPrunedWeightsPass can remove it.
        Producers whose outputs meet at an Add are pruned jointly (same channels, by the summed
        normalized norms); a channel group touching a graph output, Concat, Slice or any op that
        would not keep zeros zero is left whole.
    """

    def __init__(self, *, sparsity: float, granularity: str = "element", scope: str = "layer",
                 norm: str = "l1", include=(), exclude=()):
        super().__init__()
        if not 0 <= sparsity < 1:
            raise EdgepackError(f"--sparsity {sparsity}: must be in [0, 1)", hint="e.g. --sparsity 0.5")
        if granularity not in GRANULARITIES:
            raise EdgepackError(f"--granularity {granularity}: unknown", hint=f"one of {GRANULARITIES}")
        self.sparsity, self.granularity, self.scope, self.norm = sparsity, granularity, scope, norm
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.layers: list[dict] = []  # per-layer report of the last call

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.layers = []
        nodes = select_nodes(model, self.include, self.exclude)
        if self.granularity == "channel":
            modified = self._prune_channels(model, nodes)
        elif self.granularity == "2:4":
            modified = self._prune_2_4(nodes)
        else:
            modified = self._prune_elements(nodes)
        logger.info("pruned %d layers (%s)", sum(l["modified"] for l in self.layers), self.granularity)
        return ir.passes.PassResult(model, modified=modified)

    def _record(self, node, before: np.ndarray, after: np.ndarray, **extra) -> bool:
        changed = not np.array_equal(before, after)
        self.layers.append({"node": node_label(node), "op_type": node.op_type, "params": int(after.size),
                            "sparsity": float(np.mean(after == 0)) if after.size else 0.0,
                            "modified": changed, **extra})
        return changed

    def _prune_elements(self, nodes) -> bool:
        weights = [(n, weight_input(n)) for n in nodes]
        threshold = None
        if self.scope == "global" and weights:
            magnitudes = np.concatenate([np.abs(const_array(v)).reshape(-1) for _, v in weights])
            count = int(round(self.sparsity * magnitudes.size))
            threshold = np.partition(magnitudes, count - 1)[count - 1] if count else -1.0
        modified = False
        for node, value in weights:
            w = const_array(value)
            if threshold is None:
                pruned = _prune_smallest(w, int(round(self.sparsity * w.size)))
            else:
                pruned = np.where(np.abs(w) <= threshold, 0, w).astype(w.dtype)
            if self._record(node, w, pruned):
                _set_const(value, pruned)
                modified = True
        return modified

    def _prune_2_4(self, nodes) -> bool:
        modified = False
        for node in nodes:
            value = weight_input(node)
            w = const_array(value)
            if node.op_type == "Conv" and attr_int(node, "group", 1) != 1 or w.ndim < 2:
                self._record(node, w, w, skipped="grouped conv or 1-D weight")
                continue
            pruned = prune_2_4(w, reduction_axis(node, w.ndim))
            if pruned is None:
                self._record(node, w, w, skipped="reduction size not a multiple of 4")
                continue
            if self._record(node, w, pruned):
                _set_const(value, pruned)
                modified = True
        return modified

    # --- channel pruning -------------------------------------------------------------------
    def _prune_channels(self, model: ir.Model, nodes) -> bool:
        chosen = {id(n) for n in nodes}
        groups, frozen = _channel_groups(model, [n for n in nodes if _channel_prunable(n)])
        modified = False
        for key, chains in groups.items():
            if key in frozen or not all(id(c.node) in chosen for c in chains):
                for chain in chains:
                    w = const_array(weight_input(chain.node))
                    self._record(chain.node, w, w, skipped="channels tied to a graph output or a "
                                 "non-prunable op", kept_channels=None)
                continue
            keep = self._keep_mask(chains)
            for chain in chains:
                value = weight_input(chain.node)
                w = const_array(value)
                axis = weight_output_axis(chain.node, w.ndim)
                pruned = _zero_along(w, axis, keep)
                changed = self._record(chain.node, w, pruned, kept_channels=int(keep.sum()),
                                       channels=int(keep.size))
                if changed:
                    _set_const(value, pruned)
                    modified = True
                modified |= _zero_bias(chain.node, keep)
                for bn in chain.batchnorms:
                    for value in bn.inputs[1:3]:
                        array = const_array(value)
                        if array is not None and np.any(array[~keep] != 0):
                            _set_const(value, np.where(keep, array, 0).astype(array.dtype))
                            modified = True
        return modified

    def _keep_mask(self, chains: list[_Chain]) -> np.ndarray:
        score = None
        for chain in chains:
            w = const_array(weight_input(chain.node)).astype(np.float64)
            axis = weight_output_axis(chain.node, w.ndim)
            rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            s = np.abs(rows).sum(1) if self.norm == "l1" else np.sqrt((rows ** 2).sum(1))
            s = s / (s.max() or 1.0)
            score = s if score is None else score + s
        count = max(1, math.ceil((1 - self.sparsity) * score.size))
        keep = np.zeros(score.size, bool)
        keep[np.argsort(-score, kind="stable")[:count]] = True
        return keep


def _channel_prunable(node: ir.Node) -> bool:
    w = const_array(weight_input(node))
    if node.op_type == "Conv":
        return attr_int(node, "group", 1) == 1
    return w.ndim == 2 and (node.op_type == "Gemm" or weight_input(node) is node.inputs[1])


def _zero_along(w: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = keep.size
    return np.where(keep.reshape(shape), w, 0).astype(w.dtype)


def _zero_bias(node: ir.Node, keep: np.ndarray) -> bool:
    """Zero the dropped channels of a Conv/Gemm bias (C input); MatMul has none."""
    if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    bias = const_array(node.inputs[2])
    if bias is None or bias.shape != keep.shape or not np.any(bias[~keep] != 0):
        return False
    _set_const(node.inputs[2], np.where(keep, bias, 0).astype(bias.dtype))
    return True


def _channel_groups(model: ir.Model, producers: list[ir.Node]):
    """Union-find over producers whose outputs meet at Add/Sum; returns ({root: [_Chain]}, frozen roots)."""
    sets = DisjointSets()
    find, union = sets.find, sets.union

    prunable = {id(n) for n in producers}
    outputs = {id(v) for v in model.graph.outputs}
    freeze: set[int] = set()
    batchnorms: dict[int, list[ir.Node]] = {}

    def forward(value: ir.Value, owner: int, seen: set[int]) -> None:
        """Walk a channel-carrying value to its consumers; `owner` is a producer or a junction."""
        if id(value) in seen:
            return
        seen.add(id(value))
        if id(value) in outputs:
            freeze.add(owner)
        for user, index in value.uses():
            op = user.op_type
            if op in ("Conv", "Gemm") and index == 0 or op == "MatMul" and weight_input(user) is not None \
                    and weight_input(user) is not value:
                if op == "Conv" and attr_int(user, "group", 1) != 1:
                    freeze.add(owner)
                continue
            if op in _SINKS and index == 0:
                continue
            if op in _ZERO_PRESERVING and index == 0:
                if op == "BatchNormalization":
                    batchnorms.setdefault(owner, []).append(user)
                forward(user.outputs[0], owner, seen)
            elif op in ("Add", "Sum"):
                union(owner, id(user))
                for other in user.inputs:
                    if other is not None and other is not value:
                        backward(other, id(user), seen)
                forward(user.outputs[0], id(user), seen)
            else:
                freeze.add(owner)

    def backward(value: ir.Value, junction: int, seen: set[int]) -> None:
        node = value.producer()
        while node is not None and node.op_type in _ZERO_PRESERVING:
            value = node.inputs[0]
            node = value.producer()
        if node is None or id(node) not in prunable and node.op_type not in ("Add", "Sum"):
            freeze.add(junction)
            return
        union(id(node), junction)

    by_id = {id(n): n for n in producers}
    for node in producers:
        find(id(node))
        forward(node.outputs[0], id(node), set())
    groups: dict[int, list[_Chain]] = {}
    for key, node in by_id.items():
        groups.setdefault(find(key), []).append(_Chain(node, tuple(dict.fromkeys(batchnorms.get(key, ())))))
    # BatchNorms reached from a junction belong to the whole group: give them to its first chain.
    for key, bns in batchnorms.items():
        if key not in by_id and find(key) in groups:
            first = groups[find(key)][0]
            groups[find(key)][0] = _Chain(first.node, first.batchnorms + tuple(bns))
    frozen = {find(k) for k in freeze}
    return groups, frozen


def correct_biases(original: ir.Model, pruned: ir.Model, feeds: list[dict]) -> int:
    """Empirical bias correction, layer by layer in graph order: bias[c] -= mean over the data of
    (pruned - original) output of channel c, measured with the layers before it already corrected,
    for every Conv/Gemm whose weight changed and has a constant bias. Channels whose weights are
    all zero keep a zero bias. Both models must have the same nodes in the same order.
    Returns the number of corrected layers."""
    from tqdm import tqdm

    pairs = []
    for a, b in zip(iter_nodes(original), iter_nodes(pruned)):
        if b.op_type not in ("Conv", "Gemm") or len(b.inputs) < 3 or const_array(b.inputs[2]) is None:
            continue
        wa, wb = const_array(weight_input(a)), const_array(weight_input(b))
        if wa is not None and wb is not None and not np.array_equal(wa, wb):
            pairs.append((a, b))
    if not pairs:
        return 0
    reference = _tap(original, [a for a, _ in pairs], feeds)
    for (a, b), ref in zip(tqdm(pairs, desc="bias correction", unit="layer", leave=False,
                                disable=len(pairs) < 8 or None), reference):
        out = _tap(pruned, [b], feeds)[0]
        shift = (out - ref).mean(axis=tuple(i for i in range(ref.ndim) if i != 1))
        w = const_array(weight_input(b))
        live = np.moveaxis(w, weight_output_axis(b, w.ndim), 0).reshape(shift.size, -1).any(axis=1)
        bias = const_array(b.inputs[2])
        _set_const(b.inputs[2], np.where(live, bias - shift, bias).astype(bias.dtype))
    logger.info("bias correction on %d layers", len(pairs))
    return len(pairs)


def _tap(model: ir.Model, nodes: list[ir.Node], feeds: list[dict]) -> list[np.ndarray]:
    """The first outputs of `nodes` (of `model`) over all the feeds, in ORT."""
    from edgepack import cost

    clone = copy_model(model)
    wanted = {id(n) for n in nodes}
    positions = [i for i, n in enumerate(iter_nodes(model)) if id(n) in wanted]
    cloned = list(iter_nodes(clone))
    taps = [cloned[i].outputs[0] for i in positions]
    graph_outputs = list(clone.graph.outputs)
    clone.graph.outputs.extend(v for v in dict.fromkeys(taps) if v not in graph_outputs)
    names = [v.name for v in clone.graph.outputs]
    results = cost.run(clone, feeds)
    by_id = {id(n): i for i, n in zip(positions, nodes)}
    order = [cloned[by_id[id(n)]].outputs[0].name for n in nodes]
    return [np.concatenate([batch[names.index(name)] for batch in results]) for name in order]


def prune(model: ir.Model, *, sparsity: float, granularity: str = "element", scope: str = "layer",
          norm: str = "l1", include=(), exclude=(), fold: bool = True, data=None,
          bias_correction: bool = False) -> tuple[ir.Model, dict]:
    """Prune a copy of `model`; returns (pruned model, report with per-layer sparsity, cost and saving).

    channel granularity then removes the zeroed channels with FoldPrunedWeightsPass (unless
    `fold=False`); `bias_correction` needs `data`.
    """
    from edgepack import cost

    original = model
    model = copy_model(model)
    prune_pass = PruneWeightsPass(sparsity=sparsity, granularity=granularity, scope=scope, norm=norm,
                                  include=include, exclude=exclude)
    prune_pass(model)
    corrected = 0
    if bias_correction:
        corrected = correct_biases(original, model, cost.sample_feeds(original, data))
    folded = False
    if granularity == "channel" and fold:
        from edgepack.passes.fold_pruned_weights import FoldPrunedWeightsPass

        folded = FoldPrunedWeightsPass()(model).modified
    report = {"granularity": granularity, "sparsity": sparsity, "scope": scope,
              "layers": prune_pass.layers, "bias_corrected_layers": corrected, "folded": folded,
              **cost.cost_report(original, model, data)}
    return model, report
