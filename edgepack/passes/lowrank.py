"""Low-rank factorization of Gemm / MatMul weights and 1x1 Convs by truncated SVD."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import attr_int, const_array, copy_model, node_label, weight_input
from edgepack.passes.prune import select_nodes

logger = logging.getLogger(__name__)
_MARK = "edgepack.lowrank"


def choose_rank(singular: np.ndarray, *, rank: int | None, energy: float | None) -> int:
    """A fixed rank (capped at full), or the fewest singular values keeping `energy` of sum(s^2)."""
    if rank is not None:
        return min(rank, singular.size)
    share = np.cumsum(singular ** 2) / max(float(np.sum(singular ** 2)), 1e-30)
    return int(min(np.searchsorted(share, energy - 1e-12) + 1, singular.size))


class FactorizeLowRankPass(ir.passes.InPlacePass):
    """X @ W[K, N] -> (X @ A[K, r]) @ B[r, N] with W ~ A B from the truncated SVD
    W = U S V^T: A = U_r S_r, B = V_r^T. MACs per row go from K*N to r*(K+N); a layer is
    factorized only when that saves at least `min_saving` of its MACs (rank "full" ignores it).

    Gemm(X, W, C) becomes Gemm(X, A) -> Gemm(., B, C) (alpha, beta, transA kept);
    MatMul with a 2-D constant right operand becomes two MatMuls; a 1x1 Conv W[M, C, 1, 1]
    becomes Conv(W1[r, C, 1, 1]) with the strides/pads, then a 1x1 Conv W2[M, r, 1, 1] with the bias.
    The new nodes are marked, so a second run leaves them alone.
    """

    def __init__(self, *, rank: int | None = None, energy: float | None = None,
                 min_saving: float = 0.1, full: bool = False, include=(), exclude=()):
        super().__init__()
        if not full and (rank is None) == (energy is None):
            raise EdgepackError("lowrank needs exactly one of --rank or --energy", hint="e.g. --energy 0.95")
        if energy is not None and not 0 < energy <= 1:
            raise EdgepackError(f"--energy {energy}: must be in (0, 1]", hint="e.g. --energy 0.95")
        if rank is not None and rank < 1:
            raise EdgepackError(f"--rank {rank}: must be >= 1")
        self.rank, self.energy, self.min_saving, self.full = rank, energy, min_saving, full
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.layers: list[dict] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.layers = []
        from tqdm import tqdm

        nodes = select_nodes(model, self.include, self.exclude, ops=("Gemm", "MatMul", "Conv"))
        for node in tqdm(nodes, desc="low-rank SVD", unit="layer", leave=False, disable=len(nodes) < 20 or None):
            if _MARK in node.metadata_props:
                continue
            matrix = _as_matrix(node)
            if matrix is None:
                continue
            u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
            k, n = matrix.shape
            r = min(k, n) if self.full else choose_rank(s, rank=self.rank, energy=self.energy)
            saving = 1 - r * (k + n) / (k * n)
            entry = {"node": node_label(node), "op_type": node.op_type, "shape": [k, n], "rank": r,
                     "mac_saving": saving, "factorized": False}
            self.layers.append(entry)
            if not self.full and saving < self.min_saving:
                continue
            a = (u[:, :r] * s[:r]).astype(matrix.dtype)
            b = vt[:r].astype(matrix.dtype)
            _rewrite(model, node, a, b)
            entry["factorized"] = True
        done = sum(e["factorized"] for e in self.layers)
        logger.info("factorized %d of %d layers", done, len(self.layers))
        return ir.passes.PassResult(model, modified=done > 0)


def _as_matrix(node: ir.Node) -> np.ndarray | None:
    """The weight as W[K, N] with y = x @ W, or None when the node is not a candidate."""
    w = const_array(weight_input(node))
    if w is None or w.dtype.kind != "f":
        return None
    if node.op_type == "Gemm":
        return w.T if attr_int(node, "transB", 0) else w
    if node.op_type == "MatMul":
        return w if w.ndim == 2 and weight_input(node) is node.inputs[1] else None
    if w.ndim == 4 and w.shape[2:] == (1, 1) and attr_int(node, "group", 1) == 1:
        return w[:, :, 0, 0].T
    return None


def _rewrite(model: ir.Model, node: ir.Node, a: np.ndarray, b: np.ndarray) -> None:
    graph = node.graph
    base = node.name or node.outputs[0].name
    first_w = ir.Value(name=f"{base}/lowrank_a", const_value=None)
    second_w = ir.Value(name=f"{base}/lowrank_b", const_value=None)
    op = node.op_type
    if op == "Conv":
        first_w.const_value = ir.tensor(np.ascontiguousarray(a.T)[:, :, None, None], name=first_w.name)
        second_w.const_value = ir.tensor(np.ascontiguousarray(b.T)[:, :, None, None], name=second_w.name)
        attrs = {k: v.value for k, v in node.attributes.items() if k != "kernel_shape"}
        first = ir.node("Conv", [node.inputs[0], first_w], attributes=attrs, name=f"{base}/lowrank1")
        second = ir.node("Conv", [first.outputs[0], second_w, *node.inputs[2:]], name=f"{base}/lowrank2")
    elif op == "Gemm":
        first_w.const_value = ir.tensor(a, name=first_w.name)
        second_w.const_value = ir.tensor(b, name=second_w.name)
        first = ir.node("Gemm", [node.inputs[0], first_w], name=f"{base}/lowrank1",
                        attributes={"transA": attr_int(node, "transA", 0)})
        keep = {k: v.value for k, v in node.attributes.items() if k in ("alpha", "beta")}
        second = ir.node("Gemm", [first.outputs[0], second_w, *node.inputs[2:]], attributes=keep,
                         name=f"{base}/lowrank2")
    else:
        first_w.const_value = ir.tensor(a, name=first_w.name)
        second_w.const_value = ir.tensor(b, name=second_w.name)
        first = ir.node("MatMul", [node.inputs[0], first_w], name=f"{base}/lowrank1")
        second = ir.node("MatMul", [first.outputs[0], second_w], name=f"{base}/lowrank2")
    for new in (first, second):
        new.metadata_props[_MARK] = "factor"
    graph.register_initializer(first_w)
    graph.register_initializer(second_w)
    old_weight = weight_input(node)
    graph.insert_after(node, [first, second])
    if node.outputs[0].type is not None:
        second.outputs[0].type, second.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
    name, was_output = node.outputs[0].name, node.outputs[0] in graph.outputs
    node.outputs[0].replace_all_uses_with(second.outputs[0], replace_graph_outputs=True)
    node.outputs[0].name = f"{name}/replaced"
    second.outputs[0].name = name if was_output else f"{name}/lowrank"
    graph.remove(node, safe=True)
    if not old_weight.uses() and old_weight.is_initializer() and old_weight not in graph.outputs:
        graph.initializers.pop(old_weight.name, None)


def lowrank(model: ir.Model, *, rank: int | None = None, energy: float | None = None,
            min_saving: float = 0.1, full: bool = False, include=(), exclude=(),
            data=None) -> tuple[ir.Model, dict]:
    """A factorized copy of `model` and its report (rank and MAC saving per layer, cost)."""
    from edgepack import cost

    factored = copy_model(model)
    lowrank_pass = FactorizeLowRankPass(rank=rank, energy=energy, min_saving=min_saving, full=full,
                                        include=include, exclude=exclude)
    lowrank_pass(factored)
    report = {"rank": "full" if full else rank, "energy": energy, "min_saving": min_saving,
              "layers": lowrank_pass.layers, **cost.cost_report(model, factored, data)}
    return factored, report
