"""quantize --weights int4: weight-only INT4 for the MatMul weights, in the target's encoding.

    collect ─► (AWQ) scale ─► round (RTN | GPTQ | AWQ clip) ─► (mixed) keep sensitive at INT8 ─► encode
    H = XᵀX, mean|x|          fold 1/s into the producer       by output SQNR / top-1 budget      DQ(block) or
    per MatMul input,         (quant/smoothquant.py groups)                                        MatMulNBits
    one ORT pass per group
    of inputs that fits MEMORY_BUDGET

Activations stay float (W4A16): INT4 weight-only is what edge LLM runtimes ship. Statistics are
accumulated in float64 over the calibration batches, so memory is K² per distinct MatMul input,
not the number of tokens; inputs are collected in groups that fit MEMORY_BUDGET, one pass each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.graph import const_array, copy_model, node_label
from edgepack.quant.int4 import awq as awq_mod
from edgepack.quant.int4 import encodings
from edgepack.quant.int4.gptq import gptq
from edgepack.quant.int4.grid import Grid, Quantized, rtn

logger = logging.getLogger(__name__)
ALGORITHMS = ("rtn", "gptq", "awq", "awq-gptq")  # awq-gptq: AWQ's scaling, then GPTQ rounding
MEMORY_BUDGET = 1 << 30  # bytes of Hessians collected in one calibration pass


@dataclass
class Layer:
    node: ir.Node
    label: str
    bits: int = 4
    error: float | None = None          # tr(EᵀHE) / tr(WᵀHW) of the chosen rounding
    sqnr_db: float | None = None        # model output SQNR with only this layer INT4
    awq_alpha: float | None = None


@dataclass
class WeightOnlyResult:
    model: ir.Model
    encoding: str
    block: int
    algorithm: str
    layers: list[Layer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    output_sqnr_db: float | None = None
    top1_agreement: float | None = None


def embedding_gathers(model: ir.Model, exclude=frozenset()) -> list[ir.Node]:
    """Gather(E, ids, axis 0) of a 2-D float32 constant table used by this node only."""
    found = []
    for node in model.graph:
        if node.op_type != "Gather" or node.domain != "" or node_label(node) in exclude:
            continue
        e = const_array(node.inputs[0])
        axis = node.attributes["axis"].value if "axis" in node.attributes else 0
        if e is not None and e.ndim == 2 and e.dtype == np.float32 and axis == 0 and len(node.inputs[0].uses()) == 1:
            found.append(node)
    return found


def candidates(model: ir.Model, exclude=frozenset(), embeddings: bool = False) -> tuple[list[ir.Node], list[tuple[str, str]]]:
    """MatMul nodes with a 2-D float32 constant weight; (nodes, skipped with why)."""
    nodes, skipped = [], []
    for node in model.graph:
        if node.domain != "" or node.op_type not in ("MatMul", "Gemm", "Gather"):
            continue
        label = node_label(node)
        w = const_array(node.inputs[1]) if node.op_type == "MatMul" else None
        if node.op_type == "Gemm":
            skipped.append((label, "Gemm with transA, alpha/beta != 1 or a non-constant weight"))
        elif node.op_type == "Gather":
            if const_array(node.inputs[0]) is not None and not embeddings:
                skipped.append((label, "embedding Gather stays float (TensorRT: no blocked INT4 Gather; "
                                       "ONNX Runtime: GatherBlockQuantized with embeddings=True)"))
        elif w is None:
            continue  # activation x activation
        elif label in exclude or node.name in exclude or "MatMul" in exclude:
            skipped.append((label, "excluded"))
        elif w.ndim != 2 or w.dtype != np.float32:
            skipped.append((label, f"weight is {w.dtype} of rank {w.ndim}, not a 2-D float32 matrix"))
        elif w.shape[0] < 16:
            skipped.append((label, f"K = {w.shape[0]} is below the smallest block"))
        else:
            nodes.append(node)
    return nodes, skipped


def gemms_to_matmuls(model: ir.Model, exclude=frozenset()) -> int:
    """Gemm(x, W, b) with transA = 0, alpha = beta = 1 and a constant 2-D W becomes
    MatMul(x, W or Wᵀ) (+ Add(b)), so its weight can be blocked along K like a MatMul's."""
    from edgepack.graph import attr_int
    from edgepack.passes.rewrite import new_initializer, take_over_output

    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain != "" or node_label(node) in exclude or node.name in exclude:
            continue
        w = const_array(node.inputs[1])
        scale = [float(node.attributes[a].value) if a in node.attributes else 1.0 for a in ("alpha", "beta")]
        if w is None or w.ndim != 2 or attr_int(node, "transA", 0) or scale != [1.0, 1.0]:
            continue
        if attr_int(node, "transB", 0):
            w = np.ascontiguousarray(w.T)
        weight = new_initializer(graph, w, f"{node.inputs[1].name}_kn")
        matmul = ir.node("MatMul", [node.inputs[0], weight], name=f"{node.name}_MatMul")
        new = [matmul]
        out = matmul.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None:
            add = ir.node("Add", [out, bias], name=f"{node.name}_bias")
            new.append(add)
            out = add.outputs[0]
        graph.insert_before(node, new)
        name, was_output = node.outputs[0].name, node.outputs[0].is_graph_output()
        out.dtype, out.shape = node.outputs[0].dtype, node.outputs[0].shape
        take_over_output(node.outputs[0], out)
        graph.remove(node, safe=True)
        if not was_output:
            node.outputs[0].name, out.name = f"{name}__replaced", name
        count += 1
    return count


def collect(model: ir.Model, values: list[ir.Value], data, *, limit=None, batch_size=8,
            progress=False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{value name: (H = XᵀX [K, K], mean|x| [K])} over the data, X the rows of each value."""
    from edgepack import runtime
    from edgepack.calib.calibrate import _with_outputs
    from edgepack.calib.data import input_specs_of, open_dataset

    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    groups, group, size = [], [], 0
    for v in values:
        k = int(v.shape[-1]) if v.shape is not None and isinstance(v.shape[-1], int) else 4096
        if group and size + 8 * k * k > MEMORY_BUDGET:
            groups.append(group)
            group, size = [], 0
        group.append(v)
        size += 8 * k * k
    if group:
        groups.append(group)
    for group in groups:
        session = runtime.session(_with_outputs(copy_model(model), group))
        names = [v.name for v in group]
        sums: dict[str, list] = {}
        batches = open_dataset(data, input_specs_of(session), batch_size=batch_size, limit=limit)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="int4 statistics", unit="batch", leave=False, disable=None)
        for batch in batches:
            for name, out in zip(names, session.run(names, batch)):
                x = out.reshape(-1, out.shape[-1]).astype(np.float64)
                h, a, n = sums.get(name, (0.0, 0.0, 0))
                sums[name] = [h + x.T @ x, a + np.abs(x).sum(axis=0), n + len(x)]
        for name, (h, a, n) in sums.items():
            stats[name] = (h, a / max(n, 1))
    return stats


def round_layers(model: ir.Model, nodes: list[ir.Node], stats, grid: Grid, algorithm: str,
                 data=None, progress: bool = False) -> dict[ir.Node, Quantized]:
    """The INT4 codes of each node's weight (AWQ rescales the model's float weights first)."""
    layers: dict[ir.Node, Quantized] = {}
    if algorithm in ("awq", "awq-gptq"):
        _awq_scale(model, nodes, stats, grid, data)
    iterator = nodes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(nodes, desc=f"int4 {algorithm}", unit="layer", leave=False, disable=None)
    for node in iterator:
        w = const_array(node.inputs[1]).astype(np.float64)
        h = stats[node.inputs[0].name][0] if node.inputs[0].name in stats else None
        if algorithm == "rtn" or h is None:
            layers[node] = rtn(w, grid)
        elif algorithm in ("gptq", "awq-gptq"):
            layers[node] = gptq(w, h, grid)
        else:
            layers[node] = awq_mod.clip_search(w, h, grid)
    return layers


def _awq_scale(model: ir.Model, nodes: list[ir.Node], stats, grid: Grid, data) -> None:
    """AWQ's per-channel scaling wherever the input's producer can absorb 1/s (exact in float);
    the Hessians of the scaled inputs are rescaled to match. Checked on one batch when a group
    folds through attention (as in SmoothQuant)."""
    from edgepack.quant import smoothquant as sq

    chosen = set(nodes)
    heads, before = [], None
    for group in sq._groups(model):
        consumers = [n for n, axis in group.consumers]
        if not set(consumers) <= chosen or any(axis != 0 for _, axis in group.consumers) \
                or group.x.name not in stats:
            continue
        h, mean_abs = stats[group.x.name]
        weights = [const_array(n.inputs[1]).astype(np.float64) for n in consumers]
        s, alpha = awq_mod.search_scales(weights, h, mean_abs, grid)
        if group.absorb[0] == "heads" and before is None and data is not None:
            before = sq._outputs_on_one_batch(model, data)
        undo = sq._apply(model.graph, group, s)
        stats[group.x.name] = (h / s[:, None] / s[None, :], mean_abs / s)
        if group.absorb[0] == "heads":
            heads.append((group, undo, h, mean_abs))
        logger.debug("awq: '%s' scaled (alpha %.2f)", group.x.name, alpha)
    if heads and before is not None and not sq._close(sq._outputs_on_one_batch(model, data), before):
        for group, undo, h, mean_abs in heads:
            undo()
            stats[group.x.name] = (h, mean_abs)
        logger.warning("awq: the attention-output path does not map channels one to one; left unscaled")


def relative_error(w: np.ndarray, quantized: Quantized, h: np.ndarray | None) -> float | None:
    if h is None:
        return None
    e = quantized.dequantized() - w
    return float(np.sum((h @ e) * e) / max(np.sum((h @ w) * w), 1e-30))


def fake_quantized(model: ir.Model, weights: dict[ir.Node, np.ndarray]) -> ir.Model:
    """A float copy of `model` with the given weights replaced by their dequantized values: the
    numerics every encoding computes, for measuring choices quickly."""
    from edgepack.passes.rewrite import set_input_constant

    index = {n.name: w for n, w in weights.items()}
    copy = copy_model(model)
    for node in copy.graph:
        if node.name in index:
            set_input_constant(copy.graph, node, 1, index[node.name].astype(np.float32), f"{node.inputs[1].name}_fq")
    return copy


def int8_dequantized(w: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale.astype(np.float32)


def mix_int8(model: ir.Model, float_model: ir.Model, layers: dict[ir.Node, Quantized], data, *,
             min_sqnr_db=None, min_agreement=None, limit=64, progress=False) -> tuple[set[ir.Node], list[dict], float, float]:
    """Keep the most sensitive layers at INT8 (weight-only) until the output meets the floors.
    Sensitivity of a layer: the output SQNR of the model with only that layer INT4."""
    from edgepack.quant.sensitivity import _score

    floats = {n: const_array(n.inputs[1]).astype(np.float64) for n in layers}
    int4 = {n: q.dequantized() for n, q in layers.items()}
    rows = []
    iterator = list(layers)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="int4 sensitivity", unit="layer", leave=False, disable=None)
    for node in iterator:
        sqnr, _ = _score(float_model, fake_quantized(model, {node: int4[node]}), data, limit)
        rows.append({"node": node_label(node), "op_type": node.op_type, "sqnr_db": sqnr, "_node": node})
    rows.sort(key=lambda r: r["sqnr_db"])
    eight: set[ir.Node] = set()
    order = [r["_node"] for r in rows]
    while True:
        chosen = {n: (int8_dequantized(floats[n]) if n in eight else int4[n]) for n in layers}
        sqnr, agreement = _score(float_model, fake_quantized(model, chosen), data, limit)
        ok = (min_sqnr_db is None or sqnr >= min_sqnr_db) and (
            min_agreement is None or agreement is None or agreement >= min_agreement)
        logger.info("%d layers INT8: output SQNR %.2f dB, top-1 agreement %s", len(eight), sqnr, agreement)
        if ok or not order:
            for r in rows:
                r.pop("_node")
            return eight, rows, sqnr, agreement
        eight.add(order.pop(0))


def quantize_weights(model: ir.Model, data, target, *, algorithm: str = "awq-gptq", block_size: int | None = None,
                     exclude=frozenset(), min_sqnr_db: float | None = None, min_agreement: float | None = None,
                     limit: int | None = None, progress: bool = False) -> WeightOnlyResult:
    """Weight-only INT4 of `model` (in place) for `target`; see the module docstring."""
    from edgepack.passes.rewrite import remove_unused_initializers
    from edgepack.quant.opset_window import fit_opset

    if algorithm not in ALGORITHMS:
        raise EdgepackError(f"unknown INT4 algorithm '{algorithm}'", hint=f"use one of {', '.join(ALGORITHMS)}")
    if "int4" not in target.precisions:
        raise EdgepackError(f"target '{target.name}' does not run INT4 weights",
                            hint=target.int4_problem() or "quantize with --weights int8")
    block = block_size or (target.int4_block_sizes[-1] if target.is_tensorrt else
                           32 if 32 in target.int4_block_sizes else target.int4_block_sizes[0])
    if block not in target.int4_block_sizes:
        raise EdgepackError(f"INT4 block size {block} is not legal for {target.name}",
                            hint=f"use --block-size {' or '.join(map(str, target.int4_block_sizes))}")
    mixed = min_sqnr_db is not None or min_agreement is not None
    if (algorithm != "rtn" or mixed) and data is None:
        raise EdgepackError(f"INT4 {algorithm}{' with a budget' if mixed else ''} needs calibration data",
                            hint="pass --data D, or use --algorithm rtn")
    encoding = target.int4_encoding
    grid = Grid(block, symmetric=target.is_tensorrt or target.int4_symmetric)
    if encoding == "dequantize":
        fit_opset(model, target, encodings.DQ_BLOCK_OPSET, "INT4 DequantizeLinear with block_size")
    else:
        fit_opset(model, target, 13, "MatMulNBits beside QDQ")
    from edgepack import io

    gemms_to_matmuls(model, set(exclude))
    io.infer_shapes(model)
    gathers = embedding_gathers(model, set(exclude)) if encoding == "matmulnbits" else []
    nodes, skipped = candidates(model, set(exclude), embeddings=bool(gathers))
    result = WeightOnlyResult(model, encoding, block, algorithm, skipped=skipped)
    if not nodes:
        raise EdgepackError("no MatMul with a constant 2-D weight to quantize to INT4",
                            hint="weight-only INT4 is for transformer MatMuls; use --weights int8")
    float_model = copy_model(model) if mixed else None
    stats = {}
    if data is not None and (algorithm != "rtn" or mixed):
        values = list({n.inputs[0].name: n.inputs[0] for n in nodes}.values())
        stats = collect(model, values, data, limit=limit, progress=progress)
    layers = round_layers(model, nodes, stats, grid, algorithm, data, progress)
    records = {n: Layer(n, node_label(n)) for n in nodes}
    for node, q in layers.items():
        h = stats.get(node.inputs[0].name, (None,))[0]
        records[node].error = relative_error(const_array(node.inputs[1]).astype(np.float64), q, h)
    for node in gathers:  # RTN: an embedding row is read, not multiplied: no Hessian to weigh it
        table = const_array(node.inputs[0]).astype(np.float64)
        encodings.gather_block_quantized(model.graph, node, rtn(table.T, grid))
        result.layers.append(Layer(node, node_label(node)))
    eight: set[ir.Node] = set()
    if mixed:  # measured with the embeddings already in 4 bits: the budget covers what ships
        eight, rows, result.output_sqnr_db, result.top1_agreement = mix_int8(
            model, float_model, layers, data, min_sqnr_db=min_sqnr_db, min_agreement=min_agreement,
            limit=limit or 64, progress=progress)
        by_label = {r["node"]: r["sqnr_db"] for r in rows}
        for node in nodes:
            records[node].sqnr_db = by_label.get(records[node].label)
    graph = model.graph
    for node in nodes:
        if node in eight:
            encodings.int8_weight_only(graph, node)
            records[node].bits = 8
        elif encoding == "matmulnbits":
            encodings.matmulnbits(graph, node, layers[node])
        else:
            encodings.dequantize_blocked(graph, node, layers[node])
    if encoding == "matmulnbits":
        model.opset_imports.setdefault(encodings.MS_DOMAIN, 1)
    remove_unused_initializers(graph)
    result.layers = list(records.values()) + result.layers
    logger.info("int4 %s (block %d, %s): %d layers INT4, %d INT8", algorithm, block, encoding,
                sum(r.bits == 4 for r in result.layers), len(eight))
    return result
