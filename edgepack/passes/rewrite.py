"""Small graph edits shared by the passes: new constants, rewired inputs, outputs that keep names."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


def new_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """A fresh initializer (never edits one that other nodes may share), with a unique name."""
    unique, i = name, 1
    while unique in graph.initializers:
        unique, i = f"{name}_{i}", i + 1
    value = ir.Value(name=unique, const_value=ir.tensor(np.asarray(array, order="C"), name=unique))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype
    graph.register_initializer(value)
    return value


def set_input_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> ir.Value:
    """Make input `index` of `node` a new initializer holding `array` (appending inputs if needed)."""
    value = new_initializer(graph, array, name)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    old = node.inputs[index]
    node.replace_input_with(index, value)
    if old is not None and not old.uses() and isinstance(old.const_value, ir.ExternalTensor):
        from edgepack.io import release_tensor

        release_tensor(old.const_value)  # unmap the replaced weight now, not at the next gc
    return value


def take_over_output(old: ir.Value, new: ir.Value) -> None:
    """Route every use of `old` to `new`. If `old` is a graph output, `new` takes its name too,
    so the model's interface does not change."""
    was_output = old.is_graph_output()
    if new.type is None and old.type is not None:  # a graph output must keep its type
        new.type = old.type
    if new.shape is None and old.shape is not None:
        new.shape = old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        name = old.name
        old.name = f"{name}__replaced"
        new.name = name


def remove_unused_initializers(graph: ir.Graph) -> int:
    unused = [name for name, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()
              and v not in graph.inputs]
    for name in unused:
        graph.initializers.pop(name)
    return len(unused)
