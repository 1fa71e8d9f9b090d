"""`inspect`: what a model is made of. Parameters, MACs, weight sparsity, what a quantizer touches.

MACs (multiply-accumulates) per node, from the inferred output shape; symbolic dims count as 1,
so for a dynamic batch the numbers are per sample:
    Conv           prod(Y.shape) * prod(W.shape[1:])          (C/g * kernel per output)
    ConvTranspose  prod(X.shape) * prod(W.shape[1:])          (each input scatters M/g * kernel)
    Gemm, MatMul   prod(Y.shape) * K
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepack import io
from edgepack.graph import (
    WEIGHTED_OPS,
    attr_int,
    const_array,
    iter_nodes,
    node_label,
    static_shape,
    weight_input,
    weight_output_axis,
)

SCHEMA = "edgepack.inspect/1"


def node_macs(node: ir.Node) -> tuple[int, bool] | None:
    """(MACs, whether a symbolic dim was taken as 1), or None when shapes are unknown."""
    op = node.op_type
    if op not in WEIGHTED_OPS or node.domain != "":
        return None
    out = static_shape(node.outputs[0])
    a = static_shape(node.inputs[0])
    b = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if op == "ConvTranspose":
        dims, per_element = a, b and b[1:]
    elif op == "Conv":
        dims, per_element = out, b and b[1:]
    elif op == "Gemm":
        dims, per_element = out, a and [a[0] if attr_int(node, "transA", 0) else a[1]]
    else:  # MatMul
        dims, per_element = out, a and a[-1:]
    if dims is None or per_element is None:
        return None
    if any(not isinstance(d, int) for d in per_element):
        return None
    symbolic = any(not isinstance(d, int) for d in dims)
    count = math.prod(d if isinstance(d, int) else 1 for d in dims)
    return count * math.prod(per_element), symbolic


def layer_sparsity(node: ir.Node) -> dict | None:
    """Fraction of exact zeros in the node's weight, and how many output channels are all zero."""
    weight = weight_input(node)
    if weight is None:
        return None
    w = const_array(weight)
    if w.ndim == 0:
        return None
    axis = weight_output_axis(node, w.ndim)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    dead = ~moved.any(axis=1)
    if node.op_type == "ConvTranspose":  # W[C, M/g, k...]: output channel gi*(M/g)+j
        groups = attr_int(node, "group", 1)
        live = np.moveaxis(w, 1, 0).reshape(w.shape[1], groups, -1).any(axis=2)  # [M/g, g]
        dead = ~live.T.reshape(-1)
    return {
        "weight": weight.name,
        "params": int(w.size),
        "sparsity": float(np.count_nonzero(w == 0) / w.size) if w.size else 0.0,
        "channels": int(len(dead)),
        "zero_channels": int(dead.sum()),
    }


def inspect_model(model: ir.Model, path: str | Path | None = None) -> dict:
    """Everything `edgepack inspect` reports, as a JSON-ready dict (schema edgepack.inspect/1)."""
    io.infer_shapes(model)
    nodes = list(iter_nodes(model))
    initializers = [
        {"name": v.name, "dtype": v.const_value.dtype.name, "shape": list(v.const_value.shape),
         "params": int(v.const_value.size)}
        for g in (model.graph, *model.graph.subgraphs())
        for v in g.initializers.values()
        if v.const_value is not None
    ]
    constants = sum(
        node.attributes["value"].as_tensor().size
        for node in nodes
        if node.op_type == "Constant" and "value" in node.attributes
    )
    layers, total_macs, symbolic, macs_by_op = [], 0, False, Counter()
    for node in nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        macs = node_macs(node)
        if macs is not None:
            total_macs += macs[0]
            macs_by_op[node.op_type] += macs[0]
            symbolic |= macs[1]
        layers.append({
            "node": node_label(node),
            "op_type": node.op_type,
            "macs": None if macs is None else macs[0],
            **(layer_sparsity(node) or {"weight": None, "params": 0, "sparsity": None,
                                       "channels": None, "zero_channels": None}),
        })
    report = {
        "schema": SCHEMA,
        "path": str(path) if path else None,
        "size_bytes": io.files_nbytes(path, model) if path else None,
        "ir_version": model.ir_version,
        "opset": dict(model.opset_imports),
        "producer": " ".join(filter(None, [model.producer_name, model.producer_version])) or None,
        "inputs": [_io_entry(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [_io_entry(v) for v in model.graph.outputs],
        "nodes": len(nodes),
        "ops": dict(Counter(_op_name(n) for n in nodes).most_common()),
        "params": int(sum(i["params"] for i in initializers) + constants),
        "initializers": initializers,
        "macs": int(total_macs),
        "macs_by_op": dict(macs_by_op),
        "macs_dynamic_dims_as_one": symbolic,
        "layers": layers,
        "quantizable": [
            {"node": node_label(n), "op_type": n.op_type}
            for n in nodes
            if n.op_type in WEIGHTED_OPS and n.domain == "" and _is_float(n.inputs[0])
        ],
    }
    return report


def format_report(report: dict, top: int = 20) -> str:
    """The human-readable form of `inspect_model`'s report."""
    lines = [
        f"model       {report['path'] or '<in memory>'}",
        f"ir/opset    IR {report['ir_version']}, opsets "
        + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in report["opset"].items()),
    ]
    if report["size_bytes"] is not None:
        lines.append(f"size        {_human_bytes(report['size_bytes'])}")
    for kind in ("inputs", "outputs"):
        for entry in report[kind]:
            lines.append(f"{kind[:-1]:<11} {entry['name']}  {entry['dtype']}{entry['shape']}")
    macs_note = " (per sample: dynamic dims taken as 1)" if report["macs_dynamic_dims_as_one"] else ""
    lines += [
        f"nodes       {report['nodes']}",
        f"params      {report['params']:,}",
        f"MACs        {report['macs']:,}{macs_note}",
        "ops         " + ", ".join(f"{op} {n}" for op, n in report["ops"].items()),
        f"quantizable {len(report['quantizable'])} nodes",
    ]
    if report["layers"]:
        lines += ["", f"{'layer':<36} {'op':<13} {'params':>10} {'MACs':>13} {'zeros':>7} {'dead ch':>9}"]
        for layer in report["layers"][:top]:
            sparsity = "-" if layer["sparsity"] is None else f"{layer['sparsity']:.1%}"
            dead = "-" if layer["channels"] is None else f"{layer['zero_channels']}/{layer['channels']}"
            macs = "?" if layer["macs"] is None else f"{layer['macs']:,}"
            lines.append(
                f"{layer['node'][:36]:<36} {layer['op_type']:<13} {layer['params']:>10,} "
                f"{macs:>13} {sparsity:>7} {dead:>9}"
            )
        if len(report["layers"]) > top:
            lines.append(f"... {len(report['layers']) - top} more layers (--json for all)")
    return "\n".join(lines)


def _io_entry(value: ir.Value) -> dict:
    return {
        "name": value.name,
        "dtype": value.dtype.name if value.dtype is not None else None,
        "shape": static_shape(value),
    }


def _op_name(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in (
        ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, None
    )


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
