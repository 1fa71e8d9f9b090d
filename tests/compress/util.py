"""Test models for the compression tests: ONNX text whose weight inputs become initializers."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tests.helpers import model_from_text


def model_with_weights(text: str, weights: dict[str, np.ndarray]) -> ir.Model:
    """Parse `text` (weights declared as graph inputs), then turn those inputs into initializers."""
    model = model_from_text(text)
    for value in list(model.graph.inputs):
        if value.name in weights:
            model.graph.inputs.remove(value)
            value.const_value = ir.tensor(weights[value.name], name=value.name)
            model.graph.register_initializer(value)
    return model


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def randn(rng, *shape, scale=0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def int8_weight_qdq(model: ir.Model) -> ir.Model:
    """Weights of Conv/Gemm/MatMul as per-channel symmetric int8 initializers + DequantizeLinear,
    the form a QDQ quantizer leaves them in (activations stay float)."""
    from edgepack.graph import const_array, weight_input, weight_output_axis

    graph = model.graph
    for node in list(graph):
        value = weight_input(node)
        if value is None:
            continue
        w = const_array(value)
        axis = weight_output_axis(node, w.ndim)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / 127).astype(np.float32)
        scale[scale == 0] = 1.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        q_value = ir.Value(name=f"{value.name}_q", const_value=ir.tensor(q, name=f"{value.name}_q"))
        s_value = ir.Value(name=f"{value.name}_scale", const_value=ir.tensor(scale, name=f"{value.name}_scale"))
        graph.register_initializer(q_value)
        graph.register_initializer(s_value)
        dq = ir.node("DequantizeLinear", [q_value, s_value], attributes={"axis": axis},
                     name=f"{value.name}_dq")
        dq.outputs[0].name = f"{value.name}_dq_out"
        graph.insert_before(node, dq)
        node.replace_input_with(list(node.inputs).index(value), dq.outputs[0])
        if not value.uses():
            graph.initializers.pop(value.name)
    return model
