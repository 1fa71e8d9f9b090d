"""Small questions every pass asks of an onnx-ir graph: is this value constant, where are the
weights' output channels, what is this shape."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

# Ops whose inputs a quantizer puts Q/DQ on: they carry weights or do the heavy math.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def iter_nodes(model_or_graph: ir.Model | ir.Graph) -> Iterator[ir.Node]:
    """All nodes, subgraphs (If/Loop/Scan bodies) included."""
    graph = model_or_graph.graph if isinstance(model_or_graph, ir.Model) else model_or_graph
    return iter(ir.traversal.RecursiveGraphIterator(graph))


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is an initializer or a Constant node's output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain == "":
        if "value" in node.attributes:
            return node.attributes["value"].as_tensor().numpy()
        for name, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if name in node.attributes:
                return np.array(node.attributes[name].value, dtype=dtype)
        for name, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if name in node.attributes:
                return np.array(list(node.attributes[name].value), dtype=dtype)
    return None


def weight_input(node: ir.Node) -> ir.Value | None:
    """The constant weight input of a Conv/ConvTranspose/Gemm/MatMul, if it has one."""
    if node.op_type not in WEIGHTED_OPS or node.domain != "":
        return None
    for value in node.inputs[:2][::-1] if node.op_type == "MatMul" else node.inputs[1:2]:
        if value is not None and const_array(value) is not None:
            return value
    return None


def weight_output_axis(node: ir.Node, weight_rank: int) -> int:
    """The axis of the weight that indexes the node's output channels / features.

    Conv: W[M, C/g, k...] -> 0.  ConvTranspose: W[C, M/g, k...] -> 1.
    Gemm: B[K, N] -> 1, or B[N, K] with transB=1 -> 0.  MatMul: X @ W[..., K, N] -> last.
    """
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if attr_int(node, "transB", 0) else 1
    if op == "MatMul":
        return weight_rank - 1
    raise ValueError(f"{op} has no weight output axis")


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.value)


def attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def attr_ints(node: ir.Node, name: str, default: list[int] | None = None) -> list[int] | None:
    attr = node.attributes.get(name)
    return default if attr is None else [int(v) for v in attr.value]


def static_shape(value: ir.Value | None) -> list[int | str] | None:
    """Dims as ints where known, symbolic names (or '?') where not; None if the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or "?") for d in value.shape]


def node_label(node: ir.Node) -> str:
    return node.name or f"<{node.op_type} -> {node.outputs[0].name if node.outputs else ''}>"


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of the graph: passes that report a cost keep the original. Weights are
    shared, not copied (onnx-ir tensors are immutable; passes replace them), and external data
    keeps resolving against the model's folder, whatever the current directory."""
    import copy

    clone = model.clone()
    # onnx-ir's clone shares each value's type object, and setting `value.dtype` changes that
    # object in place: give the copy types of its own so a pass on it never retypes the original.
    graphs = [clone.graph, *clone.graph.subgraphs(), *clone.functions.values()]
    for graph in graphs:
        values = [*graph.inputs, *graph.initializers.values()] if isinstance(graph, ir.Graph) else [*graph.inputs]
        values += [v for node in graph for v in node.outputs]
        for value in values:
            if value.type is not None:
                value.type = copy.deepcopy(value.type)
    return clone
